//! Selection rules: the pure scoring function every backend implements.
//!
//! `kernels/forest.cu` (`score_child`, `select_child`) and `shaders/forest.wgsl` mirror these
//! functions operation for operation, in f32, in the same order, so that the backends agree bit
//! for bit wherever the platform's `sqrt`/`ln` agree (they differ by at most an ulp elsewhere).
//!
//! Virtual loss: a node with `vloss` selections in flight is scored as if it had `vloss` more
//! visits of value `-virtual_loss`: `N' = N + vloss`, `W' = W - virtual_loss * vloss`. The parent
//! count is likewise `N_parent + vloss_parent`.
//!
//! * **rStar UCT** (`reference/rstar-math.md` §a): `Q + c·sqrt(ln N_parent / N)` with Q = W/N; the
//!   exploration term is 0 when either count is 0, so a fresh node (N' = 0) scores exactly its
//!   initial value q0.
//! * **UCT, unvisited first**: a child with N' = 0 scores `f32::MAX` (so the lowest-index unvisited
//!   child wins), otherwise as above.
//! * **PUCT** (mctx muzero, `reference/toy_forest.c`): `pb_c = c1 + ln((N_parent + c2 + 1) / c2)`,
//!   `q = N' > 0 ? (W'/N' + 1) / 2 : 0` (values in [-1, 1] mapped to [0, 1]),
//!   `u = q + pb_c · P · sqrt(N_parent) / (1 + N')`.
//!
//! Common rules: terminal children are skipped; children pending in this step are skipped; ties go
//! to the lowest index (strict `>` while scanning in index order).

use super::{flags, Node, Rule, NONE};

/// Per-parent constants of a rule, computed once per selection step at a node.
#[derive(Clone, Copy, Debug)]
pub struct ParentTerms {
    /// UCT: ln(N_parent) (0 when N_parent = 0). PUCT: pb_c.
    pub a: f32,
    /// PUCT: sqrt(N_parent) (kept apart from pb_c to keep toy_forest.c's rounding order).
    pub b: f32,
    pub parent_n: u32,
}

#[inline]
pub fn parent_terms(rule: Rule, parent_visits_eff: u32) -> ParentTerms {
    let np = parent_visits_eff as f32;
    let (a, b) = match rule {
        Rule::Uct { .. } | Rule::UctUnvisitedFirst { .. } => {
            (if parent_visits_eff == 0 { 0.0 } else { np.ln() }, 0.0)
        }
        Rule::Puct { c1, c2 } => (c1 + ((np + c2 + 1.0) / c2).ln(), np.sqrt()),
    };
    ParentTerms {
        a,
        b,
        parent_n: parent_visits_eff,
    }
}

/// Score of one child given its effective statistics.
#[inline]
pub fn score(
    rule: Rule,
    pt: ParentTerms,
    n_eff: u32,
    w_eff: f32,
    init_value: f32,
    prior: f32,
) -> f32 {
    match rule {
        Rule::Uct { c } => {
            if n_eff == 0 {
                init_value
            } else {
                let n = n_eff as f32;
                let u = if pt.parent_n == 0 {
                    0.0
                } else {
                    c * (pt.a / n).sqrt()
                };
                w_eff / n + u
            }
        }
        Rule::UctUnvisitedFirst { c } => {
            if n_eff == 0 {
                f32::MAX
            } else {
                let n = n_eff as f32;
                let u = if pt.parent_n == 0 {
                    0.0
                } else {
                    c * (pt.a / n).sqrt()
                };
                w_eff / n + u
            }
        }
        Rule::Puct { .. } => {
            let q = if n_eff == 0 {
                0.0
            } else {
                (w_eff / n_eff as f32 + 1.0) / 2.0
            };
            q + pt.a * prior * pt.b / (1 + n_eff) as f32
        }
    }
}

/// Score of `child` under `parent` with virtual loss applied.
#[inline]
pub fn score_node(rule: Rule, pt: ParentTerms, child: &Node, virtual_loss: f32) -> f32 {
    let n_eff = child.visits + child.vloss;
    let w_eff = child.value_sum - virtual_loss * child.vloss as f32;
    score(rule, pt, n_eff, w_eff, child.init_value, child.prior)
}

/// A rule with its parameters as a type, so hot loops are compiled once per rule. `score4` is the
/// same function on four children at once (SSE2); it must round exactly like `score`.
pub trait Scorer: Copy + Send + Sync {
    fn rule(&self) -> Rule;
    #[inline(always)]
    fn parent(&self, parent_visits_eff: u32) -> ParentTerms {
        parent_terms(self.rule(), parent_visits_eff)
    }
    fn score(&self, pt: ParentTerms, n_eff: u32, w_eff: f32, init_value: f32, prior: f32) -> f32;
    #[cfg(target_arch = "x86_64")]
    fn score4(&self, pt: ParentTerms, v: &simd::Lanes) -> std::arch::x86_64::__m128;
    /// Eight children at once with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2 (call only from code behind a runtime check).
    #[cfg(target_arch = "x86_64")]
    unsafe fn score8(&self, pt: ParentTerms, v: &simd::Lanes8) -> std::arch::x86_64::__m256;
}

#[derive(Clone, Copy)]
pub struct UctScorer {
    pub c: f32,
    pub unvisited_first: bool,
}

#[derive(Clone, Copy)]
pub struct PuctScorer {
    pub c1: f32,
    pub c2: f32,
}

impl Scorer for UctScorer {
    #[inline(always)]
    fn rule(&self) -> Rule {
        if self.unvisited_first {
            Rule::UctUnvisitedFirst { c: self.c }
        } else {
            Rule::Uct { c: self.c }
        }
    }
    #[inline(always)]
    fn score(&self, pt: ParentTerms, n: u32, w: f32, q0: f32, p: f32) -> f32 {
        score(self.rule(), pt, n, w, q0, p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn score4(&self, pt: ParentTerms, v: &simd::Lanes) -> std::arch::x86_64::__m128 {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe {
            let nf = _mm_cvtepi32_ps(v.n_eff);
            let q = _mm_div_ps(v.w_eff, nf);
            let u = if pt.parent_n == 0 {
                _mm_setzero_ps()
            } else {
                _mm_mul_ps(
                    _mm_set1_ps(self.c),
                    _mm_sqrt_ps(_mm_div_ps(_mm_set1_ps(pt.a), nf)),
                )
            };
            let visited = _mm_add_ps(q, u);
            let fresh = if self.unvisited_first {
                _mm_set1_ps(f32::MAX)
            } else {
                v.init
            };
            simd::select(
                _mm_castsi128_ps(_mm_cmpeq_epi32(v.n_eff, _mm_setzero_si128())),
                fresh,
                visited,
            )
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn score8(&self, pt: ParentTerms, v: &simd::Lanes8) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let nf = _mm256_cvtepi32_ps(v.n_eff);
        let q = _mm256_div_ps(v.w_eff, nf);
        let u = if pt.parent_n == 0 {
            _mm256_setzero_ps()
        } else {
            _mm256_mul_ps(
                _mm256_set1_ps(self.c),
                _mm256_sqrt_ps(_mm256_div_ps(_mm256_set1_ps(pt.a), nf)),
            )
        };
        let visited = _mm256_add_ps(q, u);
        let fresh = if self.unvisited_first {
            _mm256_set1_ps(f32::MAX)
        } else {
            v.init
        };
        let unvisited = _mm256_castsi256_ps(_mm256_cmpeq_epi32(v.n_eff, _mm256_setzero_si256()));
        _mm256_blendv_ps(visited, fresh, unvisited)
    }
}

impl Scorer for PuctScorer {
    #[inline(always)]
    fn rule(&self) -> Rule {
        Rule::Puct {
            c1: self.c1,
            c2: self.c2,
        }
    }
    #[inline(always)]
    fn score(&self, pt: ParentTerms, n: u32, w: f32, q0: f32, p: f32) -> f32 {
        score(self.rule(), pt, n, w, q0, p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn score4(&self, pt: ParentTerms, v: &simd::Lanes) -> std::arch::x86_64::__m128 {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe {
            let nf = _mm_cvtepi32_ps(v.n_eff);
            let q = _mm_div_ps(
                _mm_add_ps(_mm_div_ps(v.w_eff, nf), _mm_set1_ps(1.0)),
                _mm_set1_ps(2.0),
            );
            let unvisited = _mm_castsi128_ps(_mm_cmpeq_epi32(v.n_eff, _mm_setzero_si128()));
            let q = _mm_andnot_ps(unvisited, q);
            let d = _mm_cvtepi32_ps(_mm_add_epi32(v.n_eff, _mm_set1_epi32(1)));
            let num = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(pt.a), v.prior), _mm_set1_ps(pt.b));
            _mm_add_ps(q, _mm_div_ps(num, d))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn score8(&self, pt: ParentTerms, v: &simd::Lanes8) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let nf = _mm256_cvtepi32_ps(v.n_eff);
        let q = _mm256_div_ps(
            _mm256_add_ps(_mm256_div_ps(v.w_eff, nf), _mm256_set1_ps(1.0)),
            _mm256_set1_ps(2.0),
        );
        let unvisited = _mm256_castsi256_ps(_mm256_cmpeq_epi32(v.n_eff, _mm256_setzero_si256()));
        let q = _mm256_andnot_ps(unvisited, q);
        let d = _mm256_cvtepi32_ps(_mm256_add_epi32(v.n_eff, _mm256_set1_epi32(1)));
        let num = _mm256_mul_ps(
            _mm256_mul_ps(_mm256_set1_ps(pt.a), v.prior),
            _mm256_set1_ps(pt.b),
        );
        _mm256_add_ps(q, _mm256_div_ps(num, d))
    }
}

/// Call `body` with the [`Scorer`] of `rule` bound to `$s` (one monomorphised copy per rule).
#[macro_export]
macro_rules! with_scorer {
    ($rule:expr, |$s:ident| $body:expr) => {
        match $rule {
            $crate::forest::Rule::Uct { c } => {
                let $s = $crate::forest::rules::UctScorer {
                    c,
                    unvisited_first: false,
                };
                $body
            }
            $crate::forest::Rule::UctUnvisitedFirst { c } => {
                let $s = $crate::forest::rules::UctScorer {
                    c,
                    unvisited_first: true,
                };
                $body
            }
            $crate::forest::Rule::Puct { c1, c2 } => {
                let $s = $crate::forest::rules::PuctScorer { c1, c2 };
                $body
            }
        }
    };
}

/// Four children's statistics transposed into lanes (x86_64 SSE2).
#[cfg(target_arch = "x86_64")]
pub mod simd {
    use std::arch::x86_64::*;

    pub struct Lanes {
        /// visits + vloss (i32 lanes; counts stay far below 2^31).
        pub n_eff: __m128i,
        /// value_sum - virtual_loss * vloss.
        pub w_eff: __m128,
        pub init: __m128,
        pub prior: __m128,
    }

    pub struct Lanes8 {
        pub n_eff: __m256i,
        pub w_eff: __m256,
        pub init: __m256,
        pub prior: __m256,
    }

    /// `mask ? a : b` per lane (SSE2 has no blendv).
    #[inline(always)]
    pub fn select(mask: __m128, a: __m128, b: __m128) -> __m128 {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { _mm_or_ps(_mm_and_ps(mask, a), _mm_andnot_ps(mask, b)) }
    }
}

/// Outcome of choosing among a node's children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Index (within the children block) of the best selectable child.
    Child(u32),
    /// Every child is terminal (or there are none): the parent becomes terminal.
    AllTerminal,
    /// Some child is open but every open one is pending in this step: a collision.
    Blocked,
}

/// Choose among `children` (the contiguous block of a node with `parent_visits_eff` visits).
#[inline]
pub fn select_child(
    rule: Rule,
    parent_visits_eff: u32,
    children: &[Node],
    virtual_loss: f32,
) -> Choice {
    crate::with_scorer!(rule, |s| choose(
        s,
        parent_visits_eff,
        children,
        virtual_loss
    ))
}

/// [`select_child`] for a rule known at compile time.
#[inline(always)]
pub fn choose<S: Scorer>(
    s: S,
    parent_visits_eff: u32,
    children: &[Node],
    virtual_loss: f32,
) -> Choice {
    choose_with(s, s.parent(parent_visits_eff), children, virtual_loss)
}

/// [`choose`] with the parent terms already computed.
#[inline(always)]
pub fn choose_with<S: Scorer>(
    s: S,
    pt: ParentTerms,
    children: &[Node],
    virtual_loss: f32,
) -> Choice {
    let mut best = NONE;
    let mut best_score = 0.0f32;
    let mut any_open = false;
    for (j, c) in children.iter().enumerate() {
        if c.is(flags::TERMINAL) {
            continue;
        }
        any_open = true;
        if c.is(flags::PENDING) {
            continue;
        }
        let n_eff = c.visits + c.vloss;
        let w_eff = c.value_sum - virtual_loss * c.vloss as f32;
        let sc = s.score(pt, n_eff, w_eff, c.init_value, c.prior);
        if best == NONE || sc > best_score {
            best = j as u32;
            best_score = sc;
        }
    }
    if best != NONE {
        Choice::Child(best)
    } else if any_open {
        Choice::Blocked
    } else {
        Choice::AllTerminal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(visits: u32, w: f32, q0: f32) -> Node {
        Node {
            visits,
            value_sum: w,
            init_value: q0,
            ..Node::default()
        }
    }

    #[test]
    fn fresh_node_scores_its_initial_value() {
        let pt = parent_terms(Rule::RSTAR_UCT, 10);
        assert_eq!(
            score_node(Rule::RSTAR_UCT, pt, &child(0, 0.0, 0.37), 1.0),
            0.37
        );
    }

    #[test]
    fn exploration_is_zero_when_parent_unvisited() {
        let pt = parent_terms(Rule::RSTAR_UCT, 0);
        assert_eq!(
            score_node(Rule::RSTAR_UCT, pt, &child(2, 1.0, 0.0), 1.0),
            0.5
        );
    }

    #[test]
    fn uct_formula() {
        let pt = parent_terms(Rule::RSTAR_UCT, 9);
        let s = score_node(Rule::RSTAR_UCT, pt, &child(3, -0.6, 0.0), 1.0);
        let want = -0.2f32 + 2.0 * ((9f32).ln() / 3.0).sqrt();
        assert!((s - want).abs() < 1e-6, "{s} vs {want}");
    }

    #[test]
    fn ties_go_to_lowest_index_and_terminals_are_skipped() {
        let mut cs = vec![child(0, 0.0, 0.5); 4];
        cs[0].meta = flags::TERMINAL;
        assert_eq!(select_child(Rule::RSTAR_UCT, 1, &cs, 1.0), Choice::Child(1));
        for c in &mut cs {
            c.meta = flags::TERMINAL;
        }
        assert_eq!(
            select_child(Rule::RSTAR_UCT, 1, &cs, 1.0),
            Choice::AllTerminal
        );
        assert_eq!(
            select_child(Rule::RSTAR_UCT, 1, &[], 1.0),
            Choice::AllTerminal
        );
        cs[2].meta = flags::PENDING;
        assert_eq!(select_child(Rule::RSTAR_UCT, 1, &cs, 1.0), Choice::Blocked);
    }

    #[test]
    fn unvisited_first() {
        let r = Rule::UctUnvisitedFirst { c: 2.0 };
        let cs = vec![child(5, 5.0, 0.0), child(0, 0.0, -1.0), child(0, 0.0, 1.0)];
        assert_eq!(select_child(r, 5, &cs, 1.0), Choice::Child(1));
    }

    #[test]
    fn virtual_loss_moves_the_choice() {
        let mut cs = vec![child(0, 0.0, 0.0); 2];
        assert_eq!(select_child(Rule::RSTAR_UCT, 0, &cs, 1.0), Choice::Child(0));
        cs[0].vloss = 1;
        // child 0 now scores -1 + 0 (parent count 1 → ln 1 = 0), child 1 scores 0.
        assert_eq!(select_child(Rule::RSTAR_UCT, 1, &cs, 1.0), Choice::Child(1));
    }

    #[test]
    fn puct_matches_toy_formula() {
        let r = Rule::MCTX_PUCT;
        let (nvis, v, w, p) = (7i32, 3i32, 0.25f32, 0.3f32);
        let sq = (nvis as f32).sqrt();
        let pbc = 1.25f32 + ((nvis as f32 + 19652.0 + 1.0) / 19652.0).ln();
        let q = (w / v as f32 + 1.0) / 2.0;
        let want = q + pbc * p * sq / (1 + v) as f32;
        let pt = parent_terms(r, nvis as u32);
        let got = score(r, pt, v as u32, w, 0.0, p);
        assert!((got - want).abs() <= 1e-6 * want.abs(), "{got} vs {want}");
    }
}
