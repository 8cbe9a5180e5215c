//! Prompt text: cleaning, tokenization and the default negative prompts.
//!
//! Mirrors the text side of the reference: `wan/modules/tokenizers.py`
//! (`HuggingfaceTokenizer` with `clean="whitespace"`: ftfy, `html.unescape`
//! twice, whitespace collapsing), diffusers' `prompt_clean` (the same steps),
//! and the default negative prompts of `wan/configs` (docs/WAN.md §4.5,
//! §4.1-§4.4). Cleaning is a port of ftfy 6.3 `fix_text`; see [`fix_text`]
//! for what it leaves out.

mod clean;
mod tokenize;

#[cfg(test)]
mod tests;

pub use clean::{
    basic_clean, clean, fix_c1_controls, fix_character_width, fix_latin_ligatures, fix_line_breaks,
    fix_text, html_unescape, remove_control_chars, remove_terminal_escapes, uncurl_quotes,
    unescape_html, whitespace_clean,
};
pub use tokenize::{Encoded, MAX_TOKENIZER_BYTES, PromptTokenizer, validate_tokenizer_json};

use wanrt_core::Task;

/// The literal of N0, shared by the three constants (`concat!` takes only
/// literals).
macro_rules! n0 {
    () => {
        "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
    };
}

/// N0: the default negative prompt of the shared config (T2V, T2I). Its
/// commas are full-width (U+FF0C); cleaning turns them into ASCII commas.
pub const NEGATIVE_PROMPT_T2V: &str = n0!();

/// N1: the I2V default, `镜头晃动，` ("camera shake") followed by N0.
pub const NEGATIVE_PROMPT_I2V: &str = concat!("镜头晃动，", n0!());

/// N2: the FLF2V default (the FLF2V config copies the I2V one, prefix
/// included), `镜头切换，` ("shot change") followed by N1.
pub const NEGATIVE_PROMPT_FLF2V: &str = concat!("镜头切换，", "镜头晃动，", n0!());

/// The negative prompt the reference substitutes for an empty one (raw,
/// not yet cleaned).
pub fn default_negative_prompt(task: Task) -> &'static str {
    match task {
        // The official VACE configuration uses the shared T2V prompt.
        Task::T2v | Task::Vace => NEGATIVE_PROMPT_T2V,
        Task::I2v => NEGATIVE_PROMPT_I2V,
        Task::Flf2v => NEGATIVE_PROMPT_FLF2V,
    }
}

/// The negative prompt to use: the user's, or the task's default when the
/// user gave none (the reference tests `n_prompt == ""`, before cleaning).
pub fn negative_prompt_or_default(user: &str, task: Task) -> &str {
    if user.is_empty() {
        default_negative_prompt(task)
    } else {
        user
    }
}
