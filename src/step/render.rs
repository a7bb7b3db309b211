//! Steps → text: the prefix the policy continues from, a finished solution, and the program of a
//! code block (rStar's `extract_program`, for the re-run-everything baseline).

use serde::{Deserialize, Serialize};

use super::{parse_solution, Step, END_OF_OUTPUT, OUTPUT, STEP_DELIM};

/// The steps of one root-to-node path, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trajectory {
    pub steps: Vec<Step>,
}

impl Trajectory {
    /// Splits a whole solution text; see [`parse_solution`].
    pub fn parse(text: &str) -> Trajectory {
        Trajectory {
            steps: parse_solution(text),
        }
    }

    /// See [`render_prefix`].
    pub fn render_prefix(&self) -> String {
        render_prefix(&self.steps)
    }

    /// See [`render_solution`].
    pub fn render_solution(&self, final_output: Option<&str>) -> String {
        render_solution(&self.steps, final_output)
    }

    /// See [`program_of`].
    pub fn program(&self) -> String {
        program_of(&self.steps)
    }

    /// The last step, when it is a final answer (rStar: its text contains "boxed").
    pub fn final_step(&self) -> Option<&Step> {
        self.steps.last().filter(|s| s.is_final())
    }
}

/// The exact text the policy continues from after `steps` (to be appended raw to the prompt):
/// each step's raw text, [`STEP_DELIM`] after every step that ended with `<end_of_step>`,
/// `<end_of_code>` or `<end_of_output>`, and `<output>{output}<end_of_output>` after the delimiter
/// of a step containing `<end_of_code>` whose [`Step::output`] is set. (A step's output is shown
/// only then, as in rStar; intermediate outputs are not part of the text.)
pub fn render_prefix(steps: &[Step]) -> String {
    render(steps, None)
}

/// A finished solution: as [`render_prefix`], with `final_output` (when given) as the output of
/// the last step containing `<end_of_code>`, in place of its [`Step::output`].
pub fn render_solution(steps: &[Step], final_output: Option<&str>) -> String {
    render(steps, final_output)
}

fn render(steps: &[Step], final_output: Option<&str>) -> String {
    let last_code_end = final_output.and_then(|_| steps.iter().rposition(|s| s.ends_code));
    let len = steps
        .iter()
        .map(|s| s.raw.len() + 2 + s.output.as_ref().map_or(0, |o| o.len() + 32))
        .sum::<usize>()
        + final_output.map_or(0, str::len);
    let mut out = String::with_capacity(len);
    for (i, step) in steps.iter().enumerate() {
        let output = if Some(i) == last_code_end {
            final_output
        } else {
            step.output.as_deref()
        };
        render_step_into(&mut out, step, output);
    }
    out
}

fn render_step_into(out: &mut String, step: &Step, output: Option<&str>) {
    out.push_str(&step.raw);
    if !step.stop.takes_delim() {
        return;
    }
    out.push_str(STEP_DELIM);
    if let (true, Some(o)) = (step.ends_code, output) {
        out.push_str(OUTPUT);
        out.push_str(o);
        out.push_str(END_OF_OUTPUT);
    }
}

/// The program of the code block the last step belongs to, as rStar's `extract_program` yields
/// it: the code of the steps from the last one that opens `<code>` (or the first step) up to and
/// including the first step that ends the block, final-answer steps skipped, each step's code
/// ending with a newline. This is what the baseline executor re-runs for every new step; our
/// executor runs each step's [`Step::code`] incrementally instead.
pub fn program_of(steps: &[Step]) -> String {
    let start = steps.iter().rposition(|s| s.opens_code).unwrap_or(0);
    let mut program = String::new();
    for step in steps.get(start..).unwrap_or_default() {
        if !step.is_final() {
            program.push_str(&step.code);
        }
        if step.ends_code {
            break;
        }
    }
    program
}

#[cfg(test)]
mod tests {
    use super::super::{parse_step, END_OF_ANSWER, END_OF_CODE, END_OF_STEP};
    use super::*;

    fn three_steps() -> Vec<Step> {
        vec![
            parse_step("<code>\n# Step 1: a\nx = 2\n", Some(END_OF_STEP)),
            parse_step("\n# Step 2: b\nprint(x * 8)\n", Some(END_OF_CODE)),
            parse_step("<answer>So \\boxed{16}.\n", Some(END_OF_ANSWER)),
        ]
    }

    #[test]
    fn prefix_shows_output_only_after_end_of_code() {
        let mut steps = three_steps();
        steps[0].output = Some("ignored".into());
        assert_eq!(
            render_prefix(&steps[..2]),
            "<code>\n# Step 1: a\nx = 2\n<end_of_step>\n\n# Step 2: b\nprint(x * 8)\n<end_of_code>\n"
        );
        steps[1].output = Some("16".into());
        assert_eq!(
            render_prefix(&steps),
            "<code>\n# Step 1: a\nx = 2\n<end_of_step>\n\n# Step 2: b\nprint(x * 8)\n<end_of_code>\n\
             <output>16<end_of_output><answer>So \\boxed{16}.\n<end_of_answer>"
        );
    }

    #[test]
    fn solution_takes_final_output() {
        let steps = three_steps();
        let text = render_solution(&steps, Some("16"));
        assert!(text.contains("<end_of_code>\n<output>16<end_of_output><answer>"));
        assert_eq!(parse_solution(&text)[1].output.as_deref(), Some("16"));
    }

    #[test]
    fn program_is_the_code_block() {
        let steps = three_steps();
        assert_eq!(
            program_of(&steps),
            "# Step 1: a\nx = 2\n# Step 2: b\nprint(x * 8)\n"
        );
        assert_eq!(program_of(&steps[..1]), "# Step 1: a\nx = 2\n");
        assert_eq!(program_of(&[]), "");
        assert_eq!(
            Trajectory { steps }
                .final_step()
                .and_then(|s| s.boxed.as_deref()),
            Some("16")
        );
    }
}
