#!/usr/bin/env python3
"""The toy forest workload of tests/reference/toy_forest.c in mctx (JAX), for a side-by-side
throughput comparison with `rstar-gpu bench forest` on the same machine.

B trees, S simulations, A=8 actions, depth cap D; prior logits -1.5*a at every node; state of the
root of tree b is b, child via action a is (state*1103515245 + a*12345 + 1) & 0x7fffffff; value
0.1*sin(state*1e-3). mctx's muzero_policy with a fixed [-1, 1] value normalisation
(qtransform_by_min_max) and no Dirichlet noise, i.e. the same PUCT as toy_forest.c except that mctx
scores an unvisited child's q as 0.5 (normalised 0) rather than 0, so trees differ slightly; the
point is the cost of the tree bookkeeping with a near-free evaluator.

Usage: python3 benches/mctx_toy.py [--trees 4096] [--sims 64] [--max-depth 16] [--reps 3]
Prints one JSON object per run.
"""
import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import mctx

A = 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", type=int, nargs="+", default=[4096])
    ap.add_argument("--sims", type=int, nargs="+", default=[64])
    ap.add_argument("--max-depth", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    logits = -1.5 * jnp.arange(A, dtype=jnp.float32)

    def value(state):
        return 0.1 * jnp.sin(state.astype(jnp.float32) * 1e-3)

    def recurrent_fn(params, rng, action, state):
        new = (state * jnp.uint32(1103515245) + action.astype(jnp.uint32) * jnp.uint32(12345) + jnp.uint32(1)) & jnp.uint32(0x7FFFFFFF)
        b = state.shape[0]
        out = mctx.RecurrentFnOutput(
            reward=jnp.zeros(b, jnp.float32),
            discount=jnp.ones(b, jnp.float32),
            prior_logits=jnp.broadcast_to(logits, (b, A)),
            value=value(new),
        )
        return out, new

    for b in args.trees:
        for s in args.sims:
            @jax.jit
            def search(rng):
                states = jnp.arange(b, dtype=jnp.uint32)
                root = mctx.RootFnOutput(prior_logits=jnp.broadcast_to(logits, (b, A)), value=value(states), embedding=states)
                out = mctx.muzero_policy(
                    params=(), rng_key=rng, root=root, recurrent_fn=recurrent_fn, num_simulations=s,
                    max_depth=args.max_depth, dirichlet_fraction=0.0,
                    qtransform=functools.partial(mctx.qtransform_by_min_max, min_value=-1.0, max_value=1.0),
                )
                return out.search_tree.children_visits[:, 0, :]

            rng = jax.random.PRNGKey(0)
            visits = search(rng).block_until_ready()  # compile
            best = float("inf")
            for _ in range(args.reps):
                t0 = time.perf_counter()
                visits = search(rng).block_until_ready()
                best = min(best, time.perf_counter() - t0)
            checksum = int(jnp.sum(visits * (jnp.arange(A) + 1)))
            print(json.dumps({
                "impl": "mctx", "mctx": mctx.__version__ if hasattr(mctx, "__version__") else "?",
                "jax": jax.__version__, "device": str(jax.devices()[0]), "trees": b, "sims": s,
                "max_depth": args.max_depth, "sims_per_sec": round(b * s / best), "ms_per_search": round(best * 1e3, 3),
                "checksum": checksum, "root_visits_tree0": [int(x) for x in visits[0]],
            }), flush=True)


if __name__ == "__main__":
    main()
