//! The key layouts of published Wan2.1 LoRA files, and how each names the
//! checkpoint tensor it modifies.
//!
//! | layout | key | alpha |
//! |---|---|---|
//! | `peft` (diffusers / PEFT) | `transformer.<diffusers module>.lora_A.weight` / `.lora_B.weight` | the header's `lora_adapter_metadata` (else α = r) |
//! | `kohya` (kohya, musubi-tuner) | `lora_unet_<original module, '.' → '_'>.lora_down.weight` / `.lora_up.weight` | per module, a 0-d `.alpha` (else α = r) |
//! | `comfy` (extracted, ComfyUI, LightX2V) | `diffusion_model.<original module>.lora_down.weight` / `.lora_up.weight`, plus `.diff` / `.diff_b` / `.diff_m` | an optional `.alpha` (else α/r = 1) |
//! | `aitoolkit` (ai-toolkit, diffusion-pipe) | `diffusion_model.<original module>.lora_A.weight` / `.lora_B.weight` | an optional `.alpha` (else α/r = 1) |
//!
//! Names are resolved from the checkpoint's side: for the canonical (original
//! Wan2.1) name of a tensor the exporter fetches, [`Layout::module_id`] gives
//! the module key this layout would store its delta under. diffusers names go
//! through the one renaming table (`wanrt_graphs::names`); kohya names are
//! the canonical module with `.` replaced by `_`, never split on `_` (which
//! would be ambiguous: `blocks_0_cross_attn_k_img`).

use wanrt_graphs::names;

/// One of the four key layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Peft,
    Kohya,
    Comfy,
    AiToolkit,
}

impl Layout {
    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Peft => "peft",
            Layout::Kohya => "kohya",
            Layout::Comfy => "comfy",
            Layout::AiToolkit => "aitoolkit",
        }
    }

    /// The module key under which this layout stores the low-rank pair of
    /// the canonical module `module` (`blocks.0.self_attn.q`), `None` when
    /// the layout has no name for it.
    pub(crate) fn module_id(self, module: &str) -> Option<String> {
        match self {
            Layout::Peft => names::dit_to_diffusers(&format!("{module}.weight"))
                .and_then(|n| n.strip_suffix(".weight").map(str::to_string)),
            Layout::Kohya => Some(module.replace('.', "_")),
            Layout::Comfy | Layout::AiToolkit => Some(module.to_string()),
        }
    }

    /// Whether this layout carries full-tensor diffs (`.diff*`).
    pub(crate) fn has_diffs(self) -> bool {
        matches!(self, Layout::Comfy | Layout::AiToolkit)
    }
}

/// The key families: which prefix a key starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Peft,
    Kohya,
    /// `diffusion_model.`: comfy or aitoolkit, decided by the pair names.
    DiffusionModel,
}

/// Which parameter of a module a `.diff*` replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Param {
    /// `.diff` → `<module>.weight`.
    Weight,
    /// `.diff_b` → `<module>.bias`.
    Bias,
    /// `.diff_m` → `<module>.modulation`.
    Modulation,
}

impl Param {
    /// Splits a canonical parameter name into (module, param).
    pub(crate) fn split(canonical: &str) -> Option<(&str, Param)> {
        let (module, leaf) = canonical.rsplit_once('.')?;
        let p = match leaf {
            "weight" => Param::Weight,
            "bias" => Param::Bias,
            "modulation" => Param::Modulation,
            _ => return None,
        };
        Some((module, p))
    }
}

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `lora_down` / `lora_A`: `[r, in]`.
    Down { ab: bool },
    /// `lora_up` / `lora_B`: `[out, r]`.
    Up { ab: bool },
    /// A 0-d alpha.
    Alpha,
    /// A full-tensor delta of one parameter.
    Diff(Param),
}

/// A key split into its family, module key and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedKey {
    pub family: Family,
    pub module: String,
    pub role: Role,
}

const PAIR_SUFFIXES: &[(&str, Role)] = &[
    (".lora_down.weight", Role::Down { ab: false }),
    (".lora_up.weight", Role::Up { ab: false }),
    (".lora_A.weight", Role::Down { ab: true }),
    (".lora_B.weight", Role::Up { ab: true }),
    (".alpha", Role::Alpha),
    (".diff_b", Role::Diff(Param::Bias)),
    (".diff_m", Role::Diff(Param::Modulation)),
    (".diff", Role::Diff(Param::Weight)),
];

/// Parses one key, `None` for a key no known layout writes.
pub(crate) fn parse_key(key: &str) -> Option<ParsedKey> {
    let (family, rest) = if let Some(r) = key.strip_prefix("transformer.") {
        (Family::Peft, r)
    } else if let Some(r) = key.strip_prefix("lora_unet_") {
        (Family::Kohya, r)
    } else if let Some(r) = key.strip_prefix("diffusion_model.") {
        (Family::DiffusionModel, r)
    } else {
        return None;
    };
    let (module, role) = PAIR_SUFFIXES.iter().find_map(|&(suffix, role)| {
        rest.strip_suffix(suffix)
            .filter(|m| !m.is_empty())
            .map(|m| (m, role))
    })?;
    let allowed = match family {
        // PEFT writes A/B pairs and keeps alpha in the header.
        Family::Peft => matches!(role, Role::Down { ab: true } | Role::Up { ab: true }),
        Family::Kohya => matches!(
            role,
            Role::Down { ab: false } | Role::Up { ab: false } | Role::Alpha
        ),
        Family::DiffusionModel => true,
    };
    // kohya module keys have no dots; the others always have one.
    let shaped = match family {
        Family::Kohya => !module.contains('.'),
        _ => true,
    };
    (allowed && shaped).then(|| ParsedKey {
        family,
        module: module.to_string(),
        role,
    })
}
