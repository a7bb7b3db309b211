//! Prompts the policy continues from: a plain step-by-step prompt and rStar's code-augmented
//! few-shot prompt (format instructions, two worked examples in the step format of
//! [`crate::step`], then the question). The partial solution is appended raw after the rendered
//! prompt, as in the official code: the next step is a continuation, not a chat turn.

use crate::model::tokenizer::Tokenizer;

/// Which prompt a method starts from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// "Solve step by step, final answer in \boxed{}": one free-form generation, no code.
    Plain,
    /// rStar's code-augmented CoT: steps of comment + Python, executed as they are written.
    Code,
}

const PLAIN_INSTRUCTIONS: &str = "Solve the following math problem step by step. \
Put the final answer in \\boxed{}.";

const CODE_INSTRUCTIONS: &str = "You are a careful mathematician and a skilled Python programmer. \
Solve the question with Python code, one small step at a time.
- Start the solution with <code>. Each step is a comment line `# Step k: what this step does` \
followed by the code of that step, and ends with <end_of_step>.
- After the last step, print the final answer with `print(...)` and write <end_of_code>.
- The output of your program is then shown between <output> and <end_of_output>.
- Finish with <answer>, one sentence that states the final answer inside \\boxed{}, and <end_of_answer>.
The most related Python packages are `math`, `fractions` and `sympy`.";

/// Two worked examples in the exact step format (our own problems, not benchmark items).
const CODE_EXAMPLES: &str = "Question: A baker makes 3 batches of 24 cookies and sells 50 of them. How many cookies are left?
<code>
# Step 1: Count the cookies baked
baked = 3 * 24
<end_of_step>

# Step 2: Subtract the cookies sold
left = baked - 50
<end_of_step>

# Now print the final answer
print(left)
<end_of_code>
<output>22<end_of_output>
<answer>The baker has \\boxed{22} cookies left.
<end_of_answer>

Question: What is the sum of all x with x^2 - 5x + 6 = 0?
<code>
# Step 1: Solve the equation with sympy
from sympy import symbols, solve
x = symbols('x')
roots = solve(x**2 - 5*x + 6, x)
<end_of_step>

# Step 2: Add the solutions
total = sum(roots)
<end_of_step>

# Now print the final answer
print(total)
<end_of_code>
<output>5<end_of_output>
<answer>The solutions are 2 and 3, so their sum is \\boxed{5}.
<end_of_answer>";

/// The user message for `question` in `style`.
pub fn user_message(style: PromptStyle, question: &str) -> String {
    match style {
        PromptStyle::Plain => format!("{PLAIN_INSTRUCTIONS}\n\n{}", question.trim()),
        PromptStyle::Code => format!(
            "{CODE_INSTRUCTIONS}\n\n{CODE_EXAMPLES}\n\nNow! It's your turn.\nQuestion: {}",
            question.trim()
        ),
    }
}

/// The full prompt text: the question in the model's chat template (ChatML when no tokenizer
/// is known, e.g. a remote server), ready for the assistant's continuation.
pub fn render(tokenizer: Option<&Tokenizer>, style: PromptStyle, question: &str) -> String {
    let user = user_message(style, question);
    match tokenizer {
        Some(t) => t.chat_prompt(None, &user),
        None => format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::{parse_solution, StopReason};

    /// The examples are themselves valid solutions in the step format.
    #[test]
    fn examples_parse_cleanly() {
        for ex in CODE_EXAMPLES.split("\n\nQuestion: ") {
            let solution = &ex[ex.find("<code>").unwrap()..];
            let steps = parse_solution(solution);
            assert!(steps.len() >= 4, "{steps:?}");
            assert_eq!(steps.last().unwrap().stop, StopReason::EndOfAnswer);
            assert!(steps.last().unwrap().boxed.is_some());
        }
    }

    #[test]
    fn chatml_without_tokenizer() {
        let p = render(None, PromptStyle::Plain, " What is 2+2? ");
        assert!(p.starts_with("<|im_start|>user\n"));
        assert!(p.ends_with("What is 2+2?<|im_end|>\n<|im_start|>assistant\n"));
    }
}
