//! Prompt cleaning, mirroring `basic_clean` + `whitespace_clean` of
//! `wan/modules/tokenizers.py` (and diffusers' `prompt_clean`):
//!
//! ```python
//! text = ftfy.fix_text(text)
//! text = html.unescape(html.unescape(text)).strip()
//! text = regex.sub(r"\s+", " ", text).strip()
//! ```
//!
//! `fix_text` is a port of ftfy 6.3 (`ftfy/__init__.py`, `ftfy/fixes.py`,
//! `ftfy/chardata.py`) minus its mojibake detector (`fix_encoding`), and
//! `html_unescape` is a port of CPython's `html.unescape`, both written from
//! their sources so that the cleaned string, and hence the token ids, are
//! those of the reference.

use std::collections::HashMap;
use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;

/// The full prompt cleaning of the reference: `whitespace_clean(basic_clean(text))`.
pub fn clean(text: &str) -> String {
    whitespace_clean(&basic_clean(text))
}

/// `basic_clean`: ftfy, then `html.unescape` twice, then `str.strip()`.
pub fn basic_clean(text: &str) -> String {
    let fixed = fix_text(text);
    let once = html_unescape(&fixed);
    let twice = html_unescape(&once);
    py_strip(&twice).to_owned()
}

/// `whitespace_clean`: every run of `\s` (the `regex` module's, which is the
/// Unicode `White_Space` property, as `char::is_whitespace`) becomes one
/// space, then `str.strip()`.
pub fn whitespace_clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    py_strip(&out).to_owned()
}

/// Python's `str.isspace`: `White_Space` plus the four information
/// separators U+001C..U+001F, which `\s` of the `regex` module leaves out.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

// ---------------------------------------------------------------------------
// ftfy.fix_text
// ---------------------------------------------------------------------------

/// ftfy's `TextFixerConfig.max_decode_length`, in code points.
const MAX_DECODE_LENGTH: usize = 1_000_000;

/// `ftfy.fix_text` with the default configuration, except `fix_encoding`
/// (mojibake repair), which is not ported.
///
/// Like ftfy, the text is fixed line by line (segments end after each `\n`),
/// and HTML entities are decoded only until a segment containing `<` is
/// seen: ftfy then assumes real HTML and switches `unescape_html` off for
/// that segment and every later one.
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    let mut rest = text;
    while !rest.is_empty() {
        let line_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let end = rest[..line_end]
            .char_indices()
            .nth(MAX_DECODE_LENGTH)
            .map_or(line_end, |(i, _)| i);
        let (segment, tail) = rest.split_at(end);
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
        rest = tail;
    }
    out
}

/// `fix_and_explain`: apply the fixers in ftfy's order until nothing changes.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_owned();
    // ftfy loops with no bound. Nested entities (`&amp;amp;...`) need one
    // pass each, so the passes never outnumber the bytes; the bound only
    // stops a cycle, on which ftfy itself would hang.
    for _ in 0..segment.len() + 8 {
        let orig = text.clone();
        if unescape {
            text = unescape_html(&text);
        }
        // ftfy runs `fix_encoding` here; see the module docs.
        text = fix_c1_controls(&text);
        text = fix_latin_ligatures(&text);
        text = fix_character_width(&text);
        text = uncurl_quotes(&text);
        text = fix_line_breaks(&text);
        // `fix_surrogates` has nothing to do: a Rust `str` cannot hold
        // surrogate code points.
        text = remove_terminal_escapes(&text);
        text = remove_control_chars(&text);
        text = text.nfc().collect();
        if text == orig {
            break;
        }
    }
    text
}

/// Windows-1252 reading of the bytes 0x80..=0x9F, where the five undefined
/// bytes stay C1 controls. It is both ftfy's `sloppy-windows-1252` (used by
/// `fix_c1_controls`) and CPython's `html._invalid_charrefs` for that range.
const C1_AS_WINDOWS_1252: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
];

fn c1_as_windows_1252(c: char) -> Option<char> {
    let i = (c as u32).checked_sub(0x80)?;
    C1_AS_WINDOWS_1252.get(i as usize).copied()
}

/// `fixes.fix_c1_controls`: C1 control characters are almost always
/// Windows-1252 bytes that were decoded as Latin-1.
pub fn fix_c1_controls(text: &str) -> String {
    text.chars()
        .map(|c| c1_as_windows_1252(c).unwrap_or(c))
        .collect()
}

/// `fixes.fix_latin_ligatures` (`chardata.LIGATURES`).
pub fn fix_latin_ligatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let rep = match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "\u{2bc}n",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "DŽ",
            'ǅ' => "Dž",
            'ǆ' => "dž",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "ſt",
            'ﬆ' => "st",
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push_str(rep);
    }
    out
}

/// `fixes.fix_character_width` (`chardata.WIDTH_MAP`): the ideographic space
/// becomes a space, and every character of the Halfwidth and Fullwidth Forms
/// block U+FF01..U+FFEF becomes its NFKC form (full-width ASCII to ASCII,
/// half-width katakana and Hangul to their normal width).
pub fn fix_character_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => out.extend(std::iter::once(c).nfkc()),
            _ => out.push(c),
        }
    }
    out
}

/// `fixes.uncurl_quotes`: `[\u02bc\u2018-\u201b]` to `'`, `[\u201c-\u201f]` to `"`.
pub fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            _ => c,
        })
        .collect()
}

/// `fixes.fix_line_breaks`: CRLF, CR, LINE SEPARATOR, PARAGRAPH SEPARATOR and
/// NEXT LINE all become `\n`.
pub fn fix_line_breaks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push('\n');
            }
            '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            _ => out.push(c),
        }
    }
    out
}

/// `fixes.remove_terminal_escapes`: drops ANSI sequences matching
/// `\x1b\[((?:\d|;)*)([a-zA-Z])`, where `\d` is any Unicode decimal digit.
pub fn remove_terminal_escapes(text: &str) -> String {
    static ANSI: OnceLock<Option<regex::Regex>> = OnceLock::new();
    // The pattern is a constant that compiles; `None` would only mean the
    // regex engine rejected it, and then the text is left as it is.
    let re = ANSI.get_or_init(|| regex::Regex::new(r"\x1b\[(?:\d|;)*[a-zA-Z]").ok());
    match re {
        Some(re) if text.contains('\u{1b}') => re.replace_all(text, "").into_owned(),
        _ => text.to_owned(),
    }
}

/// `chardata.CONTROL_CHARS`: controls that carry no meaning in text (tab,
/// line feed, form feed and carriage return are kept), the deprecated
/// format characters U+206A..U+206F, the byte-order mark and the
/// interlinear annotation characters.
fn is_removed_control(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{8}'
            | '\u{b}'
            | '\u{e}'..='\u{1f}'
            | '\u{7f}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffc}'
    )
}

/// `fixes.remove_control_chars`.
pub fn remove_control_chars(text: &str) -> String {
    text.chars().filter(|&c| !is_removed_control(c)).collect()
}

/// ftfy's `chardata.HTML_ENTITIES`: every HTML5 entity written with its
/// semicolon, plus the all-caps spelling of each lowercase one (`&EACUTE;`
/// for `&eacute;`, decoded to the uppercased character) where that spelling
/// is not itself an entity.
pub(super) fn ftfy_entities() -> &'static HashMap<String, String> {
    static MAP: OnceLock<HashMap<String, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::new();
        for e in entities::ENTITIES.iter() {
            if !e.entity.ends_with(';') {
                continue;
            }
            map.insert(e.entity.to_owned(), e.characters.to_owned());
            let name = &e.entity[1..];
            if name == name.to_lowercase() {
                let upper = format!("&{}", name.to_uppercase());
                if html_unescape(&upper) == upper {
                    map.insert(upper, e.characters.to_uppercase());
                }
            }
        }
        map
    })
}

/// `fixes.unescape_html`: decodes what matches `&#?[0-9A-Za-z]{1,24};` when it
/// is a known entity (ftfy's table: every HTML5 entity with its semicolon
/// and the all-caps spelling of the lowercase ones) or a numeric reference that
/// `html.unescape` decodes as a whole.
pub fn unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let candidate = &rest[amp..];
        let Some(len) = ftfy_entity_len(candidate) else {
            out.push('&');
            rest = &candidate[1..];
            continue;
        };
        let entity = &candidate[..len];
        if let Some(rep) = ftfy_entities().get(entity) {
            out.push_str(rep);
        } else if entity.starts_with("&#") {
            let decoded = html_unescape(entity);
            // A partial decode (`&#12a;` -> "\x0ca;") leaves the semicolon
            // behind; ftfy keeps the original then.
            out.push_str(if decoded.contains(';') {
                entity
            } else {
                &decoded
            });
        } else {
            out.push_str(entity);
        }
        rest = &candidate[len..];
    }
    out.push_str(rest);
    out
}

/// Length in bytes of the match of `&#?[0-9A-Za-z]{1,24};` at the start of
/// `s` (which starts with `&`), if any.
fn ftfy_entity_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let start = if bytes.get(1) == Some(&b'#') { 2 } else { 1 };
    let run = bytes[start..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    // With `#` absent the optional group cannot help: `#` is not alphanumeric.
    ((1..=24).contains(&run) && bytes.get(start + run) == Some(&b';')).then_some(start + run + 1)
}

// ---------------------------------------------------------------------------
// html.unescape (CPython Lib/html/__init__.py)
// ---------------------------------------------------------------------------

/// HTML5 named references, keyed without the leading `&` as in
/// `html.entities.html5` (both `amp;` and the legacy `amp`).
fn html5_entities() -> &'static HashMap<&'static str, &'static str> {
    static MAP: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    MAP.get_or_init(|| {
        entities::ENTITIES
            .iter()
            .map(|e| (&e.entity[1..], e.characters))
            .collect()
    })
}

/// Python's `html.unescape`: replaces every match of
/// `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)` following the
/// HTML5 rules for invalid numeric references and for named references
/// without their semicolon (longest known prefix wins).
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let body = &rest[amp + 1..];
        match charref_len(body) {
            Some(len) => {
                replace_charref(&body[..len], &mut out);
                rest = &body[len..];
            }
            None => {
                out.push('&');
                rest = body;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Length in bytes of the charref group matched right after an `&`.
fn charref_len(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let semicolon = |at: usize| usize::from(bytes.get(at) == Some(&b';'));
    if bytes.first() == Some(&b'#') {
        let dec = bytes[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if dec > 0 {
            return Some(1 + dec + semicolon(1 + dec));
        }
        if matches!(bytes.get(1), Some(b'x' | b'X')) {
            let hex = bytes[2..]
                .iter()
                .take_while(|b| b.is_ascii_hexdigit())
                .count();
            if hex > 0 {
                return Some(2 + hex + semicolon(2 + hex));
            }
        }
        return None;
    }
    let name_len: usize = body
        .chars()
        .take_while(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    (name_len > 0).then(|| name_len + semicolon(name_len))
}

/// `html._replace_charref` for the group `s` (the text after `&`).
fn replace_charref(s: &str, out: &mut String) {
    if let Some(num) = s.strip_prefix('#') {
        let num = num.trim_end_matches(';');
        let value = match num.strip_prefix(['x', 'X']) {
            Some(hex) => parse_saturating(hex, 16),
            None => parse_saturating(num, 10),
        };
        out.push_str(&numeric_charref(value));
        return;
    }
    let named = html5_entities();
    if let Some(rep) = named.get(s) {
        out.push_str(rep);
        return;
    }
    // Longest prefix of at least two characters, as `range(len(s)-1, 1, -1)`.
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).skip(2).collect();
    for &cut in bounds.iter().rev() {
        if let Some(rep) = named.get(&s[..cut]) {
            out.push_str(rep);
            out.push_str(&s[cut..]);
            return;
        }
    }
    out.push('&');
    out.push_str(s);
}

/// Parses the ASCII digits `charref_len` accepted. Overflow can only mean a
/// value far above U+10FFFF, which decodes like any other such value.
fn parse_saturating(digits: &str, radix: u32) -> u64 {
    u64::from_str_radix(digits, radix).unwrap_or(u64::MAX)
}

/// Numeric reference decoding of `html._replace_charref`.
fn numeric_charref(num: u64) -> String {
    let special = match num {
        0x00 => Some('\u{fffd}'),
        0x0d => Some('\r'),
        0x80..=0x9f => C1_AS_WINDOWS_1252.get((num - 0x80) as usize).copied(),
        0xd800..=0xdfff => Some('\u{fffd}'),
        _ if num > 0x10_ffff => Some('\u{fffd}'),
        _ => None,
    };
    if let Some(c) = special {
        return c.to_string();
    }
    let invalid = matches!(num, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef)
        || (num & 0xfffe) == 0xfffe;
    if invalid {
        return String::new();
    }
    u32::try_from(num)
        .ok()
        .and_then(char::from_u32)
        .map(String::from)
        .unwrap_or_default()
}
