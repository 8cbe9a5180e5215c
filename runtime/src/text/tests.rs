//! Tests of prompt cleaning and tokenization. The expected strings of the
//! rule tables were produced by ftfy 6.3.1 (`ftfy.fix_text`), CPython 3.11
//! (`html.unescape`) and the `regex` module, i.e. by the reference code.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::*;
use crate::ErrorKind;

type Case = (&'static str, &'static str, &'static str);

fn check(cases: &[Case], f: fn(&str) -> String) {
    let mut failures = Vec::new();
    for &(name, input, expected) in cases {
        let got = f(input);
        if got != expected {
            failures.push(format!(
                "{name}: {input:?} -> {got:?}, expected {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fix_text_matches_ftfy() {
    const CASES: &[Case] = &[
        (
            "width: full-width ASCII and ideographic space",
            "\u{ff2c}\u{ff2f}\u{ff35}\u{ff24}\u{3000}\u{ff2e}\u{ff2f}\u{ff29}\u{ff33}\u{ff25}\u{ff33}\u{ff01} \u{ff15}\u{ff47}\u{ff08}\u{ff58}\u{ff09}",
            "LOUD NOISES! 5g(x)",
        ),
        (
            "width: Chinese comma and full stop",
            "猫\u{ff0c}狗。好\u{ff01}",
            "猫,狗。好!",
        ),
        (
            "width: half-width katakana and Hangul",
            "\u{ff76}\u{ff80}\u{ff76}\u{ff85} \u{ff8a}\u{ff9f}\u{ff9d} \u{ffa1}\u{ffa2}",
            "カタカナ パン \u{1100}\u{1101}",
        ),
        (
            "width: full-width signs",
            "\u{ffe0}\u{ffe1}\u{ffe2}\u{ffe3}\u{ffe4}\u{ffe5}\u{ffe6}\u{ffe8}\u{ffe9}\u{ffee}",
            "¢£¬ \u{304}¦¥₩│←○",
        ),
        (
            "quotes: double and single",
            "\u{201c}hello\u{201d} \u{2018}world\u{2019} it\u{2019}s \u{201b}a\u{201f} \u{2bc}b \u{201a}c\u{201e}",
            "\"hello\" 'world' it's 'a\" 'b 'c\"",
        ),
        ("quotes: primes are kept", "5′ 6″ «x» ‹y›", "5′ 6″ «x» ‹y›"),
        (
            "controls: removed",
            "a\u{0}b\u{7}c\u{b}d\u{7f}e\u{feff}f\u{206a}g\u{fff9}h\u{1b}i\u{1f}j",
            "abcdefghij",
        ),
        (
            "controls: tab, form feed and newline kept",
            "a\tb\u{c}c\nd",
            "a\tb\u{c}c\nd",
        ),
        (
            "controls: C1 as Windows-1252",
            "\u{93}quoted\u{94} \u{80} \u{85} \u{81}",
            "\"quoted\" € … \u{81}",
        ),
        (
            "ligatures",
            "ﬂubberiﬁc ﬀ ﬃ ﬄ ﬅ ﬆ Ĳssel ĳs ŉ Ǳ ǲ ǳ Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ",
            "flubberific ff ffi ffl ſt st IJssel ijs 'n DZ Dz dz DŽ Dž dž LJ Lj lj NJ Nj nj",
        ),
        (
            "NFC",
            "Cafe\u{301} A\u{30a} n\u{303} \u{1100}\u{1161}",
            "Café Å ñ 가",
        ),
        (
            "NFC keeps compatibility characters",
            "① ² ™ ﬁ½",
            "① ² ™ fi½",
        ),
        (
            "line breaks",
            "a\r\nb\rc\u{2028}d\u{2029}e",
            "a\nb\nc\nd\ne",
        ),
        (
            "terminal escapes",
            "\u{1b}[31mred\u{1b}[0m \u{1b}[1;4mbold\u{1b}[m \u{1b}[٣m",
            "red bold ",
        ),
        (
            "entities: named, numeric, repeated",
            "&hellip; &#x2019;s &#8217; &amp;amp;amp; &lt;b&gt; &nbsp;.",
            "… 's ' & <b> \u{a0}.",
        ),
        (
            "entities: all-caps spellings",
            "&EACUTE;t&EACUTE; &NTILDE; &AMP; &SZLIG; &HELLIP;",
            "ÉtÉ Ñ & SS …",
        ),
        (
            "entities: not decoded by ftfy",
            "&amp &hellip &#12a; &#xZZ; &bogus; &averyveryveryverylongentityname;",
            "&amp &hellip &#12a; &#xZZ; &bogus; &averyveryveryverylongentityname;",
        ),
        (
            "entities: invalid numeric",
            "&#0; &#x80; &#1; &#xD800; &#99999999999; &#x1F600;",
            "� €  � � 😀",
        ),
        (
            "entities: off after a line with <",
            "&EACUTE; &ldquo;x&rdquo;\n<b>&EACUTE; &ldquo;x&rdquo;\n&EACUTE;",
            "É \"x\"\n<b>&EACUTE; &ldquo;x&rdquo;\n&EACUTE;",
        ),
        (
            "entities: off on a line with <",
            "<i>&ldquo;quoted&rdquo;</i> &EACUTE;",
            "<i>&ldquo;quoted&rdquo;</i> &EACUTE;",
        ),
        (
            "emoji and CJK untouched",
            "🐱🐶 ①② 猫 고양이 — … ™",
            "🐱🐶 ①② 猫 고양이 — … ™",
        ),
    ];
    check(CASES, fix_text);
}

#[test]
fn html_unescape_matches_python() {
    const CASES: &[Case] = &[
        (
            "named with semicolon",
            "&lt;&gt;&amp;&quot;&apos;&eacute;&ldquo;",
            "<>&\"'é\u{201c}",
        ),
        (
            "legacy name without semicolon",
            "&amp &ltx &copy2024 &notin; &notit; &ampx",
            "& <x ©2024 ∉ ¬it; &x",
        ),
        (
            "unknown names",
            "&bogus; &b &x; & alone &; &#; &#x;",
            "&bogus; &b &x; & alone &; &#; &#x;",
        ),
        ("decimal and hex", "&#65;&#x42;&#X43;&#0068 &#x45", "ABCD E"),
        (
            "invalid numeric",
            "&#0;|&#13;|&#x80;|&#x9F;|&#129;|&#1;|&#x7f;|&#xFDD0;|&#xFFFE;|&#x1FFFF;|&#xD800;|&#x110000;|&#99999999999999999999999;",
            "�|\r|€|Ÿ|\u{81}||||||�|�|�",
        ),
        (
            "name of 33 characters",
            "&abcdefghijklmnopqrstuvwxyzabcdefg;",
            "&abcdefghijklmnopqrstuvwxyzabcdefg;",
        ),
        (
            "name stops at tab, space, <, &, #, ;",
            "&amp\tx &amp<x &amp&amp; &am#p;",
            "&\tx &<x && &am#p;",
        ),
        ("non-ASCII in a name", "&ampé; &éacute;", "&é; &éacute;"),
    ];
    check(CASES, html_unescape);
}

#[test]
fn clean_matches_reference() {
    const CASES: &[Case] = &[
        (
            "whitespace runs, NBSP, ideographic and em spaces",
            "  a \u{a0}\u{3000} b\u{2003}\u{2003}c\n\n\td\u{b}\u{c}\u{85}e  ",
            "a b c d …e",
        ),
        (
            "information separators stripped only at the ends",
            "\u{1c} a \u{1d}",
            "a",
        ),
        (
            "double unescape after ftfy",
            "&amp;lt;b&amp;gt; <i>&amp;amp;</i>",
            "<b> <i>&</i>",
        ),
        (
            "curly quotes from entities on an HTML line stay curly",
            "<p>&ldquo;hi&rdquo;</p>",
            "<p>\u{201c}hi\u{201d}</p>",
        ),
        (
            "zero-width space is not whitespace",
            "a\u{200b}b \u{200b} c",
            "a\u{200b}b \u{200b} c",
        ),
        (
            "mixed",
            "  \u{ff34}\u{ff48}\u{ff45}  \u{201c}\u{ff43}\u{ff41}\u{ff54}\u{201d}\u{2019}s ﬁsh&nbsp;&amp;amp;\r\n chips…  ",
            "The \"cat\"'s fish & chips…",
        ),
    ];
    check(CASES, clean);
}

#[test]
fn whitespace_clean_matches_reference() {
    const CASES: &[Case] = &[
        (
            "separators only at the ends",
            "\u{1c} a\u{1c}b \u{1d}",
            "a\u{1c}b",
        ),
        (
            "runs of mixed whitespace",
            "a \t\n\u{a0}\u{2028}b\u{3000}\u{3000}c",
            "a b c",
        ),
        ("only whitespace", " \t\n ", ""),
    ];
    check(CASES, whitespace_clean);
}

#[test]
fn single_rules() {
    assert_eq!(
        fix_character_width("\u{ff21}\u{ff0c}\u{3000}\u{ff5e}"),
        "A, ~"
    );
    assert_eq!(
        uncurl_quotes("\u{201c}a\u{201d} \u{2018}b\u{2019}"),
        "\"a\" 'b'"
    );
    assert_eq!(fix_latin_ligatures("\u{fb01}\u{fb02}"), "fifl");
    assert_eq!(
        fix_c1_controls("\u{96}\u{97}\u{99}"),
        "\u{2013}\u{2014}\u{2122}"
    );
    assert_eq!(fix_line_breaks("a\r\n\r\nb\u{85}"), "a\n\nb\n");
    assert_eq!(
        remove_control_chars("a\u{0}\u{8}\t\n\u{c}\r\u{7f}b"),
        "a\t\n\u{c}\rb"
    );
    assert_eq!(
        remove_terminal_escapes("\u{1b}[0;31mx\u{1b}[!"),
        "x\u{1b}[!"
    );
    assert_eq!(unescape_html("&amp;amp; &EACUTE; &#65;"), "&amp; \u{c9} A");
    assert_eq!(basic_clean("  &amp;lt;x&amp;gt;  "), "<x>");
    // The fixers run until nothing changes: each pass peels one `&amp;`.
    assert_eq!(fix_text("&amp;amp;amp;lt;"), "<");
}

#[test]
fn fix_text_is_idempotent_on_clean_text() {
    for s in [
        "",
        "plain ascii",
        "猫と犬",
        "고양이",
        "emoji 🐱",
        "é composed",
    ] {
        assert_eq!(fix_text(s), s);
        assert_eq!(clean(s), s);
    }
}

/// ftfy's `chardata.HTML_ENTITIES` has 3501 entries; this is the SHA-256 of
/// its sorted `"{entity}\t{text}"` lines joined with `\n`, computed with
/// ftfy 6.3.1, so the derived table (all-caps spellings included) is pinned.
#[test]
fn ftfy_entity_table_is_complete() {
    let table = super::clean::ftfy_entities();
    assert_eq!(table.len(), 3501);
    let mut lines: Vec<String> = table.iter().map(|(k, v)| format!("{k}\t{v}")).collect();
    lines.sort();
    let hex = wanrt_core::fsio::hex(&Sha256::digest(lines.join("\n").as_bytes()));
    assert_eq!(
        hex,
        "4bb9193b8a62c41922d12da9c23d82cdd057a49228e970a70f89b9b26a038bc4"
    );
}

#[test]
fn negative_prompts() {
    assert_eq!(NEGATIVE_PROMPT_T2V.chars().count(), 137);
    assert_eq!(NEGATIVE_PROMPT_T2V.matches('\u{ff0c}').count(), 27);
    assert!(NEGATIVE_PROMPT_T2V.starts_with("色调艳丽，过曝，"));
    assert!(NEGATIVE_PROMPT_T2V.ends_with("背景人很多，倒着走"));
    assert_eq!(
        NEGATIVE_PROMPT_I2V,
        format!("镜头晃动\u{ff0c}{NEGATIVE_PROMPT_T2V}")
    );
    assert_eq!(
        NEGATIVE_PROMPT_FLF2V,
        format!("镜头切换\u{ff0c}{NEGATIVE_PROMPT_I2V}")
    );
    assert_eq!(
        default_negative_prompt(wanrt_core::Task::T2v),
        NEGATIVE_PROMPT_T2V
    );
    assert_eq!(
        default_negative_prompt(wanrt_core::Task::I2v),
        NEGATIVE_PROMPT_I2V
    );
    assert_eq!(
        negative_prompt_or_default("", wanrt_core::Task::I2v),
        NEGATIVE_PROMPT_I2V
    );
    assert_eq!(
        negative_prompt_or_default("blurry", wanrt_core::Task::I2v),
        "blurry"
    );
    // The fixtures' long prompt ends with N0, written down independently.
    let (_, prompts) = golden_prompts("t2v-tiny");
    let long = prompts
        .iter()
        .find(|p| p.name == "long_truncated")
        .expect("long prompt");
    assert!(long.raw.ends_with(&format!(", {NEGATIVE_PROMPT_T2V}")));
    // Cleaning folds the full-width commas; nothing else changes.
    assert_eq!(
        clean(NEGATIVE_PROMPT_T2V),
        NEGATIVE_PROMPT_T2V.replace('\u{ff0c}', ",")
    );
}

// ---------------------------------------------------------------------------
// Golden fixtures
// ---------------------------------------------------------------------------

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

#[derive(Debug)]
struct GoldenPrompt {
    name: String,
    raw: String,
    cleaned: String,
    tokens: Vec<String>,
    seq_len: usize,
    truncated: bool,
    num_tokens_untruncated: usize,
}

fn golden_prompts(case: &str) -> (usize, Vec<GoldenPrompt>) {
    let path = fixtures().join(case).join("golden/prompts.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("prompts.json parses");
    let str_of = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is a string"))
            .to_owned()
    };
    let usize_of = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} is a number")) as usize
    };
    let len = usize_of(&json, "max_sequence_length");
    let prompts = json["prompts"]
        .as_array()
        .expect("prompts is an array")
        .iter()
        .map(|p| GoldenPrompt {
            name: str_of(p, "name"),
            raw: str_of(p, "raw"),
            cleaned: str_of(p, "cleaned"),
            tokens: p["tokens"]
                .as_array()
                .expect("tokens is an array")
                .iter()
                .map(|t| t.as_str().expect("token is a string").to_owned())
                .collect(),
            seq_len: usize_of(p, "seq_len"),
            truncated: p["truncated"].as_bool().expect("truncated is a bool"),
            num_tokens_untruncated: usize_of(p, "num_tokens_untruncated"),
        })
        .collect();
    (len, prompts)
}

struct GoldenIds {
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    seq_lens: Vec<i64>,
    shape: Vec<u64>,
}

fn golden_ids(case: &str) -> GoldenIds {
    let path = fixtures()
        .join(case)
        .join("golden/text_encoder.safetensors");
    let tensors: BTreeMap<String, crate::HostTensor> =
        crate::tensorfile::read(&path).expect("text_encoder.safetensors reads");
    let get = |name: &str| {
        tensors
            .get(name)
            .and_then(|t| t.to_i64())
            .unwrap_or_else(|| panic!("{name} is an int64 tensor"))
    };
    GoldenIds {
        input_ids: get("input_ids"),
        attention_mask: get("attention_mask"),
        seq_lens: get("seq_lens"),
        shape: tensors["input_ids"].shape.clone(),
    }
}

fn check_case(case: &str, tokenizer_dir: &str) {
    let (text_len, prompts) = golden_prompts(case);
    let golden = golden_ids(case);
    assert_eq!(golden.shape, vec![prompts.len() as u64, text_len as u64]);
    let tok = PromptTokenizer::from_dir(&fixtures().join(case).join(tokenizer_dir))
        .expect("fixture tokenizer loads");
    assert_eq!((tok.pad_id(), tok.eos_id()), (0, 1));
    for (i, p) in prompts.iter().enumerate() {
        let ctx = format!("{case}/{tokenizer_dir} prompt {} ({})", i, p.name);
        let cleaned = clean(&p.raw);
        assert_eq!(cleaned, p.cleaned, "{ctx}: cleaned text");

        let tokens = tok.tokens(&cleaned).expect("tokens");
        assert_eq!(
            tokens.len() + 1,
            p.num_tokens_untruncated,
            "{ctx}: token count"
        );
        assert_eq!(
            p.truncated,
            tokens.len() + 1 > text_len,
            "{ctx}: truncated flag"
        );
        let kept = p.seq_len - 1;
        assert_eq!(&tokens[..kept], &p.tokens[..kept], "{ctx}: token strings");
        assert_eq!(p.tokens.last().map(String::as_str), Some("</s>"), "{ctx}");

        let enc = tok.clean_and_encode(&p.raw, text_len).expect("encode");
        let row = i * text_len..(i + 1) * text_len;
        assert_eq!(
            enc.input_ids,
            golden.input_ids[row.clone()],
            "{ctx}: input_ids"
        );
        assert_eq!(
            enc.attention_mask, golden.attention_mask[row],
            "{ctx}: attention_mask"
        );
        assert_eq!(enc.seq_len as i64, golden.seq_lens[i], "{ctx}: seq_len");
        assert_eq!(enc.seq_len, p.seq_len, "{ctx}: seq_len vs prompts.json");
    }
}

#[test]
fn golden_t2v_tiny() {
    check_case("t2v-tiny", "model/tokenizer");
    check_case("t2v-tiny", "model/original/google/umt5-xxl");
}

#[test]
fn golden_i2v_tiny() {
    check_case("i2v-tiny", "model/tokenizer");
    check_case("i2v-tiny", "model/original/google/umt5-xxl");
}

#[test]
fn golden_pipeline_prompts_clean() {
    for case in ["t2v-tiny", "i2v-tiny"] {
        let path = fixtures().join(case).join("golden/prompts.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("reads")).expect("parses");
        let p = &json["pipeline"];
        for (raw, cleaned) in [
            ("prompt", "prompt_cleaned"),
            ("negative_prompt", "negative_prompt_cleaned"),
        ] {
            let raw = p[raw].as_str().expect("string");
            assert_eq!(clean(raw), p[cleaned].as_str().expect("string"), "{case}");
        }
    }
}

fn tokenizer() -> PromptTokenizer {
    PromptTokenizer::from_dir(&fixtures().join("t2v-tiny/model/tokenizer")).expect("loads")
}

#[test]
fn empty_prompt_is_just_eos() {
    let enc = tokenizer().encode("", 8).expect("encode");
    assert_eq!(enc.seq_len, 1);
    assert_eq!(enc.input_ids, vec![1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(enc.attention_mask, vec![1, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn truncation_keeps_room_for_eos() {
    let tok = tokenizer();
    let full = tok.encode("a cat and a dog", 64).expect("encode");
    assert!(full.seq_len > 3);
    let short = tok.encode("a cat and a dog", 3).expect("encode");
    assert_eq!(short.seq_len, 3);
    assert_eq!(short.input_ids[..2], full.input_ids[..2]);
    assert_eq!(short.input_ids[2], 1);
    assert_eq!(short.attention_mask, vec![1, 1, 1]);
    let one = tok.encode("a cat", 1).expect("encode");
    assert_eq!((one.input_ids, one.seq_len), (vec![1], 1));
    let err = tok.encode("a cat", 0).expect_err("text_len 0 is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn missing_tokenizer_file_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope/tokenizer.json");
    let err = PromptTokenizer::from_file(&path).expect_err("missing file fails");
    assert_eq!(err.kind(), ErrorKind::Tokenizer);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let err = PromptTokenizer::from_dir(dir.path()).expect_err("dir without tokenizer.json fails");
    assert_eq!(err.kind(), ErrorKind::Tokenizer);
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn non_tokenizer_file_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, &[u8]); 4] = [
        ("garbage.json", b"\xff\xfe not json at all"),
        ("empty.json", b""),
        ("object.json", b"{\"hello\": 1}"),
        ("no_eos.json", br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<pad>":0,"a":1},"unk_token":"<pad>"}}"#),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let err = PromptTokenizer::from_file(&path).expect_err("not a tokenizer");
        assert_eq!(err.kind(), ErrorKind::Tokenizer, "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    // The safetensors next to the tokenizer is a real file, but no tokenizer.
    let path = fixtures().join("t2v-tiny/golden/text_encoder.safetensors");
    let err = PromptTokenizer::from_file(&path).expect_err("not a tokenizer");
    assert_eq!(err.kind(), ErrorKind::Tokenizer);
}

/// 400 random strings built from fragments that exercise every fixer and
/// their interactions (entities, `<`, line breaks, width forms, quotes, C1
/// controls, ligatures, combining marks, escapes), with the outputs of
/// ftfy 6.3.1 `fix_text` and of the reference cleaning. Strings on which
/// ftfy's mojibake repair acts were left out of the corpus (not ported).
#[test]
fn ftfy_differential_corpus() {
    let cases: Vec<(String, String, String)> =
        serde_json::from_str(include_str!("ftfy_corpus.json")).expect("corpus parses");
    assert_eq!(cases.len(), 400);
    let mut failures = Vec::new();
    for (raw, fixed, cleaned) in &cases {
        let (got_fixed, got_cleaned) = (fix_text(raw), clean(raw));
        if got_fixed != *fixed || got_cleaned != *cleaned {
            failures.push(format!(
                "{raw:?}: fix_text {got_fixed:?} (ftfy {fixed:?}), clean {got_cleaned:?} (reference {cleaned:?})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
