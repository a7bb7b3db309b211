//! Picking one answer from many: the highest-scored, a (weighted) vote over top-K, or a plain
//! majority. Answers are grouped by the grader's equivalence (`1/2`, `0.5` and `\frac12` are one
//! answer), so a vote never splits over formatting.

use super::config::AnswerRule;
use crate::grade::Grader;

/// One candidate answer: its text and its score (a node's Q or a PPM score, in [-1, 1]).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored<'a> {
    pub answer: &'a str,
    pub score: f32,
}

/// The pick: the index of the representative candidate (the best-scored member of the winning
/// group) and the group's vote.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub index: usize,
    /// Total weight of the winning group.
    pub votes: f32,
    /// Candidates in the winning group (among those that voted).
    pub group_size: usize,
}

/// Groups answers by equivalence: returns a group id per answer (ids are the index of the
/// group's first member). One batched grader call for all distinct pairs.
pub fn group(grader: &Grader, answers: &[&str]) -> Vec<usize> {
    let mut distinct: Vec<&str> = Vec::new();
    let mut of: Vec<usize> = Vec::with_capacity(answers.len());
    for a in answers {
        let a = a.trim();
        match distinct.iter().position(|d| *d == a) {
            Some(i) => of.push(i),
            None => {
                of.push(distinct.len());
                distinct.push(a);
            }
        }
    }
    let mut pairs = Vec::new();
    for i in 0..distinct.len() {
        for j in i + 1..distinct.len() {
            pairs.push((i, j));
        }
    }
    let mut parent: Vec<usize> = (0..distinct.len()).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    if !pairs.is_empty() {
        let texts: Vec<(&str, &str)> = pairs
            .iter()
            .map(|&(i, j)| (distinct[i], distinct[j]))
            .collect();
        for (&(i, j), o) in pairs.iter().zip(grader.equiv_many(&texts)) {
            if o.equivalent {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    // Map each distinct answer's root to the index of the first answer in that group.
    let mut first_of_root = vec![usize::MAX; distinct.len()];
    let mut out = Vec::with_capacity(answers.len());
    for (k, &d) in of.iter().enumerate() {
        let r = find(&mut parent, d);
        if first_of_root[r] == usize::MAX {
            first_of_root[r] = k;
        }
        out.push(first_of_root[r]);
    }
    out
}

/// Picks one answer by `rule` (`top_k` for [`AnswerRule::Vote`]). `None` when there is nothing
/// to pick from. Ties go to the group with the higher best score, then to the earlier candidate.
pub fn pick(grader: &Grader, cands: &[Scored<'_>], rule: AnswerRule, top_k: usize) -> Option<Pick> {
    if cands.is_empty() {
        return None;
    }
    let by_score =
        |a: &usize, b: &usize| cands[*b].score.total_cmp(&cands[*a].score).then(a.cmp(b));
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(by_score);
    if rule == AnswerRule::Best {
        return Some(Pick {
            index: order[0],
            votes: cands[order[0]].score,
            group_size: 1,
        });
    }
    let voters: Vec<usize> = match rule {
        AnswerRule::Vote => order.iter().copied().take(top_k.max(1)).collect(),
        _ => (0..cands.len()).collect(),
    };
    let answers: Vec<&str> = voters.iter().map(|&i| cands[i].answer).collect();
    let groups = group(grader, &answers);
    // (weight, best score, best member) per group.
    let mut acc: std::collections::BTreeMap<usize, (f32, f32, usize, usize)> = Default::default();
    for (k, &i) in voters.iter().enumerate() {
        let w = match rule {
            AnswerRule::Vote => ((cands[i].score + 1.0) / 2.0).clamp(0.0, 1.0),
            _ => 1.0,
        };
        let e = acc
            .entry(groups[k])
            .or_insert((0.0, f32::NEG_INFINITY, i, 0));
        e.0 += w;
        e.3 += 1;
        if cands[i].score > e.1 || (cands[i].score == e.1 && i < e.2) {
            e.1 = cands[i].score;
            e.2 = i;
        }
    }
    let (_, &(votes, _, index, group_size)) = acc.iter().max_by(|(ga, a), (gb, b)| {
        a.0.total_cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(gb.cmp(ga))
    })?;
    Some(Pick {
        index,
        votes,
        group_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(answer: &str, score: f32) -> Scored<'_> {
        Scored { answer, score }
    }

    #[test]
    fn groups_equivalent_forms() {
        let g = Grader::quick();
        assert_eq!(
            group(&g, &["0.5", "1/2", "3", "\\frac{1}{2}", "3.0"]),
            vec![0, 0, 2, 0, 2]
        );
    }

    #[test]
    fn rules() {
        let g = Grader::quick();
        let c = [s("5", 0.9), s("4", 0.1), s("4.0", 0.2), s("4", -0.5)];
        assert_eq!(pick(&g, &c, AnswerRule::Best, 4).unwrap().index, 0);
        let m = pick(&g, &c, AnswerRule::Majority, 4).unwrap();
        assert_eq!((m.index, m.group_size), (2, 3));
        // top-2 by score: 5 (0.95) vs 4.0 (0.6): the 5 wins.
        assert_eq!(pick(&g, &c, AnswerRule::Vote, 2).unwrap().index, 0);
        // top-3: 5 (0.95) vs {4.0, 4} (0.6 + 0.55).
        let v = pick(&g, &c, AnswerRule::Vote, 3).unwrap();
        assert_eq!((v.index, v.group_size), (2, 2));
        assert!((v.votes - 1.15).abs() < 1e-6);
        assert_eq!(pick(&g, &[], AnswerRule::Best, 1), None);
        // A tie in majority goes to the group with the better best score.
        let t = [s("1", 0.0), s("2", 0.5)];
        assert_eq!(pick(&g, &t, AnswerRule::Majority, 1).unwrap().index, 1);
    }
}
