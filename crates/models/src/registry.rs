//! The model zoo: every named model, under its timm name, with the facts a user compares.

use crate::checkpoint::param_count;
use crate::{ArchConfig, Error, PretrainedCfg, Result, FAMILIES};

/// One named model of the zoo.
#[derive(Debug, Clone, Copy)]
pub struct ModelEntry {
    /// timm name, e.g. `poolformer_s12`.
    pub name: &'static str,
    /// Family, e.g. `poolformer`, `caformer`.
    pub family: &'static str,
    /// ImageNet-1k top-1 (%) at 224² reported by the model's paper, where the paper gives one
    /// for training on ImageNet-1k alone.
    pub top1: Option<f64>,
    pub(crate) config: fn() -> ArchConfig,
    pub(crate) pretrained_cfg: fn() -> PretrainedCfg,
    /// The pretrained tag of timm's hub repository (`sail_in1k` for
    /// `timm/poolformer_s12.sail_in1k`), for the models timm publishes weights for.
    pub(crate) hub_tag: Option<&'static str>,
}

impl ModelEntry {
    /// The architecture at its default (ImageNet-1k, 224²) settings.
    pub fn config(&self) -> ArchConfig {
        (self.config)()
    }

    /// timm's pretrained config of the released weights.
    pub fn pretrained_cfg(&self) -> PretrainedCfg {
        (self.pretrained_cfg)()
    }

    /// Number of parameters (frozen buffers stored in the checkpoint included).
    pub fn params(&self) -> u64 {
        param_count(&self.config()).unwrap_or(0)
    }

    /// Multiply-accumulates of one forward pass at the default input size
    /// ([`PretrainedCfg::image_size`] of [`pretrained_cfg`](Self::pretrained_cfg): 224² for most
    /// models, 256² for AFFNet).
    pub fn macs(&self) -> u64 {
        let (h, w) = self.pretrained_cfg().image_size();
        self.config().macs(h, w)
    }

    /// The Hugging Face repository of timm's ImageNet-1k weights for this model
    /// (`timm/poolformer_s12.sail_in1k`), or `None` where timm publishes none.
    ///
    /// Source: the `default_cfgs` entries with `hf_hub_id='timm/'` in timm's
    /// `timm/models/metaformer.py` (`poolformer_*`, `poolformerv2_*`, `convformer_*` and
    /// `caformer_*`, all `.sail_in1k`; no IdentityFormer or RandFormer), `mambaout.py`
    /// (`mambaout_{femto,kobe,tiny,small,base}.in1k`) and `mlp_mixer.py`
    /// (`mixer_{b16,l16}_224.goog_in21k_ft_in1k`, `gmixer_24_224.ra3_in1k`,
    /// `resmlp_{12,24,36}_224.fb_in1k`, `gmlp_s16_224.ra3_in1k`; the other Mixer, gMixer and
    /// gMLP sizes are `.untrained`). GFNet, MS-MLP, RaftMLP, AFFNet, MambaFormer and MambaMixer
    /// are not in timm at all.
    pub fn hub_id(&self) -> Option<String> {
        self.hub_tag.map(|tag| format!("timm/{}.{tag}", self.name))
    }
}

/// A [`ModelEntry`]: `entry!(name, family, top1, crop_pct, metaformer_config)` for a MetaFormer
/// with timm's MetaFormer pretrained config, or `entry!(name, family, Option<top1>, ArchConfig,
/// pretrained: PretrainedCfg)`.
macro_rules! entry {
    ($name:literal, $family:literal, $top1:expr, $crop:expr, $cfg:expr $(, hub: $tag:literal)?) => {
        $crate::registry::ModelEntry {
            name: $name,
            family: $family,
            top1: Some($top1),
            config: || $crate::ArchConfig::new($cfg),
            pretrained_cfg: || $crate::PretrainedCfg::metaformer($crop),
            hub_tag: $crate::registry::hub_tag!($($tag)?),
        }
    };
    ($name:literal, $family:literal, $top1:expr, $cfg:expr, pretrained: $pre:expr $(, hub: $tag:literal)?) => {
        $crate::registry::ModelEntry {
            name: $name,
            family: $family,
            top1: $top1,
            config: || $cfg,
            pretrained_cfg: || $pre,
            hub_tag: $crate::registry::hub_tag!($($tag)?),
        }
    };
}
pub(crate) use entry;

/// `Some(tag)` for an entry's optional `hub: "tag"`, `None` without one.
macro_rules! hub_tag {
    () => {
        None
    };
    ($tag:literal) => {
        Some($tag)
    };
}
pub(crate) use hub_tag;

/// Every zoo entry: each family's [`Family::MODELS`](crate::Family::MODELS), in [`FAMILIES`]
/// order.
fn all_models() -> impl Iterator<Item = &'static ModelEntry> {
    FAMILIES.iter().flat_map(|f| f.models.iter())
}

/// Whether `name` matches a shell-style `pattern` (`*` any run, `?` one character).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Zoo entries whose name matches `pattern`: a shell-style glob if it contains `*` or `?`
/// (`"caformer_*"`), otherwise a substring (`"s12"`); the empty pattern lists everything.
pub fn list_models(pattern: &str) -> Vec<&'static ModelEntry> {
    all_models()
        .filter(|m| name_matches(pattern, m.name))
        .collect()
}

/// Whether `name` matches `pattern` as [`list_models`] matches names.
pub(crate) fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern.contains(['*', '?']) {
        glob_match(pattern.as_bytes(), name.as_bytes())
    } else {
        name.contains(pattern)
    }
}

/// The zoo entry for a timm name; a pretrained tag (`poolformer_s12.sail_in1k`) is ignored.
/// An unknown name is an error that suggests the closest names.
pub fn model_entry(name: &str) -> Result<&'static ModelEntry> {
    let arch = name.split('.').next().unwrap_or(name);
    if let Some(m) = all_models().find(|m| m.name == arch) {
        return Ok(m);
    }
    let family = arch.split('_').next().unwrap_or(arch);
    let near: Vec<&str> = all_models()
        .filter(|m| m.name.starts_with(family))
        .map(|m| m.name)
        .collect();
    let hint = if near.is_empty() {
        "; run `tokenmix list` for the available models".to_string()
    } else {
        format!("; did you mean one of: {}?", near.join(", "))
    };
    Err(Error::UnknownModel {
        name: name.to_string(),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_substrings_select_models() {
        assert_eq!(list_models("caformer_*").len(), 4);
        assert_eq!(list_models("").len(), all_models().count());
        assert_eq!(all_models().count(), 115);
        assert!(list_models("s12").iter().all(|m| m.name.contains("s12")));
        assert!(list_models("*_m4?").iter().all(|m| m.name.ends_with("m48")));
        assert!(list_models("nothing*").is_empty());
    }

    #[test]
    fn hub_ids_only_for_weights_timm_publishes() {
        let id = |n: &str| model_entry(n).unwrap().hub_id();
        assert_eq!(
            id("poolformer_s12").as_deref(),
            Some("timm/poolformer_s12.sail_in1k")
        );
        assert_eq!(
            id("mambaout_femto").as_deref(),
            Some("timm/mambaout_femto.in1k")
        );
        assert_eq!(
            id("resmlp_36_224").as_deref(),
            Some("timm/resmlp_36_224.fb_in1k")
        );
        for none in [
            "identityformer_s12",
            "randformer_s12",
            "mixer_s16_224",
            "gmlp_ti16_224",
            "gmixer_12_224",
            "msmlp_tiny",
            "affnet",
            "gfnet_ti",
            "raftmlp_s",
            "mambaformer_s18",
            "mambamixer_ti",
        ] {
            assert_eq!(id(none), None, "{none}");
        }
        let published = all_models().filter(|m| m.hub_id().is_some()).count();
        assert_eq!(published, 5 + 5 + 4 + 4 + 5 + 2 + 1 + 3 + 1);
    }

    #[test]
    fn unknown_names_get_suggestions() {
        assert_eq!(
            model_entry("caformer_s18.sail_in1k").unwrap().name,
            "caformer_s18"
        );
        let err = model_entry("caformer_s99").unwrap_err().to_string();
        assert!(
            err.contains("unknown model 'caformer_s99'") && err.contains("caformer_s18"),
            "{err}"
        );
    }

    #[test]
    fn parameter_counts_match_the_reference_models() {
        // Counts from instantiating the timm models (timm 1.0.31).
        let expect = [
            ("poolformer_s12", 11_915_176),
            ("poolformerv2_s12", 11_891_712),
            ("convformer_s18", 26_774_448),
            ("caformer_s18", 26_341_656),
            ("poolformer_m48", 73_473_448),
            ("caformer_b36", 98_753_614),
            ("mambaout_femto", 7_304_536),
            ("mixer_s32_224", 19_104_624),
            ("mixer_b16_224", 59_880_472),
            ("gmixer_24_224", 24_721_096),
            ("resmlp_12_224", 15_350_872),
            ("gmlp_s16_224", 19_422_656),
            // Counts from instantiating the authors' code.
            ("msmlp_tiny", 28_656_232),
            ("raftmlp_s", 9_868_768),
            ("affnet_et", 1_436_264),
            ("affnet", 5_568_696),
            ("rcvit_xs", 3_200_700),
            ("rcvit_s", 5_764_224),
            ("rcvit_m", 12_421_520),
            ("rcvit_t", 21_763_120),
            ("EfficientViM_M1", 6_679_458),
            ("EfficientViM_M2", 13_903_842),
            ("EfficientViM_M3", 16_604_174),
            ("EfficientViM_M4", 19_606_505),
            ("wavemix", 27_857_608),
            ("wavemix_lite", 12_494_536),
            ("wavemix_73", 49_416_808),
            ("wavemix_level4_imagenet_70_42", 62_764_776),
            ("wavemix_cifar10_94_58", 3_042_550),
            ("wavemix_cifar10_95_37", 17_073_610),
            ("wavemix_cifar100_77_82", 10_954_084),
            ("wavemix_cifar100_78_81", 13_611_492),
            ("iformer_small", 19_866_344),
            ("iformer_base", 47_866_216),
            ("iformer_large", 86_637_096),
            ("iformer_small_384", 20_899_944),
            ("iformer_base_384", 48_936_296),
            ("iformer_large_384", 87_743_656),
            // FFNet in its training (unfused) form, as its checkpoints hold it.
            ("ffnet_1", 13_775_656),
            ("ffnet_2", 27_208_408),
            ("ffnet_3", 48_817_896),
            ("ffnet_4", 79_868_968),
            ("ninformer_cifar10", 2_652_170),
            ("ninformer_s16_224", 20_289_688),
            ("ninformer_b16_224", 72_426_520),
            ("transnext_micro", 12_809_304),
            ("transnext_tiny", 28_258_960),
            ("transnext_small", 49_741_564),
            ("transnext_base", 89_721_496),
            ("transnext_micro_AAAA", 13_114_008),
            // tokenmix's compositions, counted on the reference modules: timm's MetaFormer with
            // LinFusion's GeneralizedLinearAttention in stages 2-3.
            ("linattnformer_s18", 33_213_528),
            ("linattnformer_s36", 49_881_294),
            ("linattnformer_m36", 70_880_782),
            ("linattnformer_b36", 124_809_550),
            // The same with goombalab/hydra's Hydra (its defaults) in stages 2-3, and the
            // isotropic Hydra ViTs counted on the reference Hydra with timm's Mlp.
            ("hydraformer_s18", 31_206_198),
            ("hydraformer_s36", 46_927_866),
            ("hydraformer_m36", 66_371_320),
            ("hydraformer_b36", 115_741_318),
            ("hydra_vit_s16_224", 27_003_928),
            ("hydra_vit_b16_224", 103_969_864),
            // tokenmix's readings, counted on scripts/make_wave2b_fixtures.py's PyTorch modules.
            ("tokenmix_dsm_s18", 42_650_988),
            ("tokenmix_dsm_s36", 69_673_344),
            ("tokenmix_s2a_t", 3_303_384),
            ("tokenmix_s2a_s", 15_291_720),
            ("tokenmix_s2a_b", 29_977_608),
        ];
        for (name, n) in expect {
            assert_eq!(model_entry(name).unwrap().params(), n, "{name}");
        }
    }
}
