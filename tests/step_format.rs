//! The rStar code-augmented step format: round trips on the rStar examples (reference doc §b and
//! variants, fixtures in `tests/step/`), the step-by-step path the search takes (parse each
//! generation, render the prefix), and property tests that no input panics and that
//! parse → render → parse is stable.

use proptest::prelude::*;
use rstar_gpu::step::{
    parse_solution, parse_step, program_of, render_prefix, render_solution, ParseIssue, Step,
    StopReason, Trajectory, BOOTSTRAP_STOP_STRINGS, END_OF_ANSWER, END_OF_CODE, END_OF_STEP,
    OTHER_SPECIAL_TOKENS, SPECIAL_TOKENS, STOP_STRINGS,
};

const FIXTURES: [(&str, &str); 5] = [
    ("rstar_example", include_str!("step/rstar_example.txt")),
    ("rstar_full", include_str!("step/rstar_full.txt")),
    (
        "sympy_nested_boxed",
        include_str!("step/sympy_nested_boxed.txt"),
    ),
    (
        "single_step_unicode",
        include_str!("step/single_step_unicode.txt"),
    ),
    ("empty_output", include_str!("step/empty_output.txt")),
];

/// (fixture, number of steps, output of the `<end_of_code>` step, boxed answer)
const EXPECTED: [(&str, usize, &str, &str); 5] = [
    ("rstar_example", 4, "16.0", "16"),
    ("rstar_full", 5, "16.0", "16"),
    ("sympy_nested_boxed", 5, "sqrt(2)/2", "\\frac{\\sqrt{2}}{2}"),
    ("single_step_unicode", 2, "28.2743", "28.27"),
    ("empty_output", 3, "", "7"),
];

#[test]
fn stop_strings_are_rstars() {
    assert_eq!(
        STOP_STRINGS,
        ["<end_of_step>", "<end_of_code>", "<end_of_answer>"]
    );
    assert_eq!(
        BOOTSTRAP_STOP_STRINGS,
        [
            "<end_of_step>",
            "<end_of_code>",
            "<end_of_answer>",
            "<end_of_output>"
        ]
    );
    assert_eq!(
        SPECIAL_TOKENS,
        [
            "<code>",
            "<end_of_step>",
            "<end_of_code>",
            "<output>",
            "<end_of_output>",
            "<answer>",
            "<end_of_answer>"
        ]
    );
}

#[test]
fn fixtures_round_trip_exactly() {
    for (name, text) in FIXTURES {
        let steps = parse_solution(text);
        assert_eq!(render_solution(&steps, None), text, "{name}");
        assert_eq!(render_prefix(&steps), text, "{name}");
        assert_eq!(Trajectory::parse(text).render_prefix(), text, "{name}");
    }
}

#[test]
fn fixtures_parse_into_clean_steps() {
    for ((name, text), (ename, n, output, boxed)) in FIXTURES.iter().zip(EXPECTED) {
        assert_eq!(*name, ename);
        let steps = parse_solution(text);
        assert_eq!(steps.len(), n, "{name}: {steps:#?}");
        for s in &steps {
            assert!(s.is_clean(), "{name}: {s:#?}");
        }
        assert!(steps[0].opens_code, "{name}");
        assert!(steps[1..].iter().all(|s| !s.opens_code), "{name}");
        let code_end = &steps[n - 2];
        assert!(
            code_end.ends_code && code_end.stop == StopReason::EndOfCode,
            "{name}"
        );
        assert_eq!(code_end.output.as_deref(), Some(output), "{name}");
        assert!(
            steps[..n - 2]
                .iter()
                .all(|s| s.stop == StopReason::EndOfStep),
            "{name}"
        );
        let last = &steps[n - 1];
        assert!(
            last.is_final() && last.stop == StopReason::EndOfAnswer,
            "{name}"
        );
        assert_eq!(last.boxed.as_deref(), Some(boxed), "{name}");
        assert!(steps[..n - 1].iter().all(|s| !s.is_final()), "{name}");
        assert!(steps[..n - 1].iter().all(Step::needs_execution), "{name}");
        let t = Trajectory { steps };
        assert_eq!(t.final_step().and_then(|s| s.boxed.as_deref()), Some(boxed));
    }
}

#[test]
fn rstar_example_steps_in_detail() {
    let steps = parse_solution(FIXTURES[0].1);
    assert_eq!(
        steps[0].comments,
        ["# Step 1: Calculate the total weight lifted with two 20-pound weights"]
    );
    assert_eq!(
        steps[0].code,
        "# Step 1: Calculate the total weight lifted with two 20-pound weights\n\
         total_weight_20 = 2 * 20 * 12\n"
    );
    // The blank line between steps is the next step's own leading newline.
    assert!(steps[1].raw.starts_with("\n# Step 2"));
    assert_eq!(
        steps[3].answer.as_deref(),
        Some(
            "From the result, we can see that Terrell must lift the 15-pound weights \\boxed{16} \
             times ...\n"
        )
    );
    assert_eq!(
        program_of(&steps),
        "# Step 1: Calculate the total weight lifted with two 20-pound weights\n\
         total_weight_20 = 2 * 20 * 12\n\
         # Step 2: ...\n\
         weight_per_rep_15 = 2 * 15\n\
         ...\n\
         # Now print the final answer\n\
         print(reps_needed)\n"
    );
}

/// The path the search driver takes: one generation at a time, stop string excluded (vLLM's
/// default) or included, the executor's output attached to the `<end_of_code>` step, the prefix
/// rendered after each step. The final prefix is the full solution.
#[test]
fn incremental_generation_renders_the_solution() {
    let text = FIXTURES[1].1;
    let reference = parse_solution(text);
    for include_stop in [false, true] {
        let mut steps: Vec<Step> = Vec::new();
        for r in &reference {
            let stop = r.stop.as_token();
            let generated = match (include_stop, stop) {
                (false, Some(t)) => r.raw.strip_suffix(t).unwrap_or(&r.raw),
                _ => r.raw.as_str(),
            };
            // The prefix before this step must be exactly the text before it.
            assert!(text.starts_with(&render_prefix(&steps)));
            let mut s = parse_step(generated, stop);
            if s.ends_code {
                s.output = r.output.clone();
            }
            steps.push(s);
        }
        assert_eq!(steps, reference);
        assert_eq!(render_prefix(&steps), text);
    }
    // Without the output the code-ending step is followed only by the delimiter.
    let prefix = render_prefix(&parse_solution(text)[..4]);
    assert!(prefix.ends_with("<end_of_code>\n<output>16.0<end_of_output>"));
    let mut no_out = parse_solution(text)[..4].to_vec();
    no_out[3].output = None;
    assert!(render_prefix(&no_out).ends_with("print(reps_needed)\n<end_of_code>\n"));
    assert!(render_solution(&no_out, Some("16.0")).ends_with("<output>16.0<end_of_output>"));
}

#[test]
fn garbled_generations_parse_with_reasons() {
    let cases: [(&str, Option<&str>, ParseIssue); 9] = [
        ("x = (1 +", None, ParseIssue::Truncated),
        ("", Some(END_OF_STEP), ParseIssue::Empty),
        (
            "# Step 4: only words\n",
            Some(END_OF_STEP),
            ParseIssue::NoCode,
        ),
        (
            "<answer>\\boxed{2}\nprint(2)\n",
            Some(END_OF_CODE),
            ParseIssue::CodeAfterAnswer,
        ),
        (
            "<answer>\\boxed{2}<end_of_answer>more",
            None,
            ParseIssue::TextAfterAnswer,
        ),
        (
            "<answer>\\boxed{2",
            Some(END_OF_ANSWER),
            ParseIssue::UnclosedBoxed,
        ),
        (
            "<answer>it is two",
            Some(END_OF_ANSWER),
            ParseIssue::AnswerWithoutBoxed,
        ),
        (
            "x = 1\n</s>",
            Some("</s>"),
            ParseIssue::UnknownStop("</s>".into()),
        ),
        (
            "x = 1<|user|>y",
            Some(END_OF_STEP),
            ParseIssue::StrayToken("<|user|>".into()),
        ),
    ];
    for (text, stop, issue) in cases {
        let s = parse_step(text, stop);
        assert!(s.issues.contains(&issue), "{text:?}: {:?}", s.issues);
        let json = serde_json::to_string(&s).expect("serialize");
        let back: Step = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

/// Text built from the pieces that matter: every special token, stop strings, `\boxed{`,
/// unbalanced braces, comment markers, newlines, arbitrary unicode.
fn messy_text() -> impl Strategy<Value = String> {
    let token = prop::sample::select(
        SPECIAL_TOKENS
            .iter()
            .chain(OTHER_SPECIAL_TOKENS.iter())
            .copied()
            .chain([
                "\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "#", "\n", "\r\n", "<", ">", "$",
                "boxed", "<end_of", "x = 1", "    ",
            ])
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    let piece = prop_oneof![
        3 => token,
        2 => "\\PC{0,6}",
        1 => any::<String>().prop_map(|s| s.chars().take(6).collect()),
    ];
    prop::collection::vec(piece, 0..32).prop_map(|v| v.concat())
}

fn stop_choice() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        Just(Some("</s>".to_string())),
        prop::sample::select(BOOTSTRAP_STOP_STRINGS.to_vec()).prop_map(|s| Some(s.to_string())),
    ]
}

/// A well-formed solution's parts: comments, code lines, output, answer. Parts avoid the
/// characters that make up the format's tokens so that they cannot form one by accident.
fn plain() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_ =+*/().,'π²é]{0,20}"
}

fn solution_parts() -> impl Strategy<Value = (Vec<(String, Vec<String>)>, String, String, bool)> {
    (
        prop::collection::vec((plain(), prop::collection::vec(plain(), 1..4)), 1..6),
        plain(),
        plain(),
        any::<bool>(),
    )
}

/// Renders the parts the way the policy writes them.
fn well_formed(
    steps: &[(String, Vec<String>)],
    output: &str,
    answer: &str,
    blank_lines: bool,
) -> String {
    let mut t = String::from("<code>\n");
    for (i, (comment, lines)) in steps.iter().enumerate() {
        if i > 0 && blank_lines {
            t.push('\n');
        }
        t.push_str(&format!("# Step {}: {comment}\n", i + 1));
        for l in lines {
            // Make every code line a statement (never blank, never a comment).
            t.push_str(&format!("v{i} = {l:?}\n"));
        }
        let end = if i + 1 == steps.len() {
            END_OF_CODE
        } else {
            END_OF_STEP
        };
        t.push_str(end);
        t.push('\n');
    }
    t.push_str(&format!(
        "<output>{output}<end_of_output><answer>So {answer} is \\boxed{{{{{answer}}}}}.\n{END_OF_ANSWER}"
    ));
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parse_step_never_panics_and_is_idempotent(text in messy_text(), stop in stop_choice()) {
        let s = parse_step(&text, stop.as_deref());
        let _ = (s.is_final(), s.needs_execution(), program_of(std::slice::from_ref(&s)));
        let _ = render_prefix(std::slice::from_ref(&s));
        // The stop string is always at the end of `raw`, so parsing `raw` again changes nothing.
        if let Some(t) = s.stop.as_token() {
            prop_assert!(s.raw.ends_with(t));
            prop_assert_eq!(&parse_step(&s.raw, Some(t)), &s);
            prop_assert_eq!(&parse_step(&s.raw, None), &s);
        } else {
            prop_assert!(s.issues.contains(&ParseIssue::Truncated));
        }
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), s);
    }

    #[test]
    fn parse_render_parse_is_stable(text in messy_text()) {
        let steps = parse_solution(&text);
        let rendered = render_prefix(&steps);
        let again = parse_solution(&rendered);
        prop_assert_eq!(&again, &steps);
        prop_assert_eq!(render_prefix(&again), rendered);
        let _ = program_of(&steps);
    }

    #[test]
    fn arbitrary_unicode_never_panics(text in any::<String>(), stop in stop_choice()) {
        let s = parse_step(&text, stop.as_deref());
        let steps = parse_solution(&text);
        prop_assert_eq!(parse_solution(&render_prefix(&steps)), steps);
        let _ = s;
    }

    #[test]
    fn well_formed_solutions_round_trip_exactly(
        (steps, output, answer, blank) in solution_parts()
    ) {
        let text = well_formed(&steps, &output, &answer, blank);
        let parsed = parse_solution(&text);
        prop_assert_eq!(render_solution(&parsed, None), text.clone());
        prop_assert_eq!(parsed.len(), steps.len() + 1);
        for s in &parsed {
            prop_assert!(s.is_clean(), "{:?}", s);
        }
        let code_end = &parsed[steps.len() - 1];
        prop_assert!(code_end.ends_code);
        prop_assert_eq!(code_end.output.as_deref(), Some(output.as_str()));
        let boxed = format!("{{{answer}}}");
        prop_assert_eq!(parsed[steps.len()].boxed.as_deref(), Some(boxed.as_str()));
        let program = program_of(&parsed);
        prop_assert_eq!(
            program.lines().filter(|l| !l.starts_with('#')).count(),
            steps.iter().map(|(_, l)| l.len()).sum::<usize>()
        );
    }
}
