use super::*;

#[test]
fn poly1d_is_highest_power_first() {
    // 2x² + 3x + 4 at 2 = 18.
    assert_eq!(decide::poly1d(&[2.0, 3.0, 4.0], 2.0), 18.0);
    assert_eq!(decide::poly1d(&[0.0, 0.0, 0.0, 1.0, -1.0], 5.0), 4.0);
}

#[test]
fn resampling_is_nearest_per_branch() {
    // 4 steps → 3: cond column [c0..c3], uncond [u0..u3]; scale 1.5:
    // indices round(0) = 0, round(1.5) = 2 (ties to even), round(3) = 3.
    let t = [10.0, 20.0, 11.0, 21.0, 12.0, 22.0, 13.0, 23.0];
    assert_eq!(
        resample_mag_ratios(&t, 3),
        vec![10.0, 20.0, 12.0, 22.0, 13.0, 23.0]
    );
    // Same length: as is; one step: the last entries.
    assert_eq!(resample_mag_ratios(&t, 4), t.to_vec());
    assert_eq!(resample_mag_ratios(&t, 1), vec![13.0, 23.0]);
    // 2 → 5 steps: scale 0.25, indices 0, 0, 0 (0.5 → 0), 1, 1.
    let t = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(
        resample_mag_ratios(&t, 5),
        vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]
    );
}

#[test]
fn magcache_counts_retention_error_and_k() {
    // 6 steps, retention 0.2 → int(12 · 0.2) = 2 calls (step 0 of both
    // branches); every later ratio 0.99 → error 0.01, 0.0299, …
    let mut r = vec![1.0, 1.0];
    r.extend([0.99; 10]);
    let d = magcache_schedule(&r, 0.05, 2, 0.2, 6, 0);
    let computed: Vec<bool> = d.iter().map(|d| d.computed).collect();
    // steps 1, 2 skip (count 1, 2), step 3 count 3 > K computes and resets,
    // steps 4, 5 skip.
    assert_eq!(computed, [true, false, false, true, false, false]);
    assert_eq!(d[0].indicator, None);
    assert!((d[1].indicator.unwrap() - 0.01).abs() < 1e-12);
    assert!((d[2].indicator.unwrap() - (0.01 + (1.0 - 0.99f64 * 0.99))).abs() < 1e-12);
    // A low threshold computes wherever the error reaches it.
    let d = magcache_schedule(&r, 0.015, 10, 0.2, 6, 1);
    let computed: Vec<bool> = d.iter().map(|d| d.computed).collect();
    assert_eq!(computed, [true, false, true, false, true, false]);
    // An odd retention count gives the branches different lengths:
    // int(12 · 0.25) = 3 → cond steps 0, 1, uncond step 0 only.
    let c = magcache_schedule(&r, 1.0, 10, 0.25, 6, 0);
    let u = magcache_schedule(&r, 1.0, 10, 0.25, 6, 1);
    assert_eq!((c[1].computed, u[1].computed), (true, false));
}

#[test]
fn teacache_forces_first_and_last_or_the_retention_steps() {
    // Indicators whose rel-L1 change is 0.1 every step; polynomial x → x.
    let rows: Vec<Vec<f32>> = (0..8).map(|i| vec![1.1f32.powi(i); 4]).collect();
    let m: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    let c = [0.0, 0.0, 0.0, 1.0, 0.0];
    let d = teacache_schedule(&c, 0.25, false, &m, 0);
    let computed: Vec<bool> = d.iter().map(|d| d.computed).collect();
    // acc 0.1, 0.2 skip, 0.3 computes; …; the last step forced.
    assert_eq!(
        computed,
        [true, false, false, true, false, false, true, true]
    );
    assert_eq!(d[7].indicator, None);
    let d = teacache_schedule(&c, 0.25, true, &m, 1);
    let computed: Vec<bool> = d.iter().map(|d| d.computed).collect();
    // Steps 0–4 forced, then 0.1, 0.2 skip (the last step is not forced).
    assert_eq!(computed, [true, true, true, true, true, false, false, true]);
}

#[test]
fn tables_parse_or_name_the_field() {
    let mag = r#"{"mag_ratios": [1.0, 1.0, 0.99, 0.98]}"#;
    assert_eq!(
        parse_table(mag, CachePolicy::MagCache).unwrap(),
        CacheTable::MagRatios(vec![1.0, 1.0, 0.99, 0.98])
    );
    let tea = r#"{"modes": {"e": {"coefficients": [1, 2, 3, 4, 5]},
                             "e0": {"coefficients": [5, 4, 3, 2, 1]}}}"#;
    assert_eq!(
        parse_table(tea, CachePolicy::TeaCacheRet).unwrap(),
        CacheTable::Coefficients([5.0, 4.0, 3.0, 2.0, 1.0])
    );
    for (text, policy, want) in [
        ("{", CachePolicy::MagCache, "not JSON"),
        ("{}", CachePolicy::MagCache, "no field 'mag_ratios'"),
        (
            r#"{"mag_ratios": [1, 1, 1]}"#,
            CachePolicy::MagCache,
            "3 entries",
        ),
        (
            r#"{"mag_ratios": [1, 1, 0, 1]}"#,
            CachePolicy::MagCache,
            "[2] is 0",
        ),
        (
            r#"{"mag_ratios": "x"}"#,
            CachePolicy::MagCache,
            "not an array",
        ),
        (
            r#"{"mag_ratios": [1, 1, "a", 1]}"#,
            CachePolicy::MagCache,
            "[2] is not a finite",
        ),
        (tea, CachePolicy::FbCache, "takes no table"),
        (
            r#"{"modes": {"e0": {"coefficients": [1,2,3,4,5]}}}"#,
            CachePolicy::TeaCache,
            "no field 'modes.e.coefficients'",
        ),
        (
            r#"{"modes": {"e": {"coefficients": [1,2,3,4]}}}"#,
            CachePolicy::TeaCache,
            "4 entries",
        ),
    ] {
        let e = parse_table(text, policy).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
    }
}

fn tiny() -> (DitConfig, Profile) {
    let mut cfg = DitConfig::t2v_1_3b();
    cfg.dim = 32;
    cfg.num_layers = 2;
    (cfg, Profile::custom(32, 32, 9, 16).unwrap())
}

#[test]
fn options_resolve_or_name_the_flag() {
    let (cfg, p) = tiny();
    let opt = |policy| CacheOptions {
        policy,
        ..Default::default()
    };
    assert_eq!(opt(CachePolicy::None).resolve(&cfg, &p, 10).unwrap(), None);
    // An unknown model needs a table for TeaCache and MagCache.
    let e = opt(CachePolicy::MagCache)
        .resolve(&cfg, &p, 10)
        .unwrap_err();
    assert!(e.to_string().starts_with("--cache-table:"), "{e}");
    // fbcache: diffusers' default threshold.
    let fb = opt(CachePolicy::FbCache)
        .resolve(&cfg, &p, 10)
        .unwrap()
        .unwrap();
    assert_eq!(fb.threshold, 0.05);
    for (o, flag) in [
        (
            CacheOptions {
                threshold: Some(-1.0),
                ..opt(CachePolicy::FbCache)
            },
            "--cache-threshold",
        ),
        (
            CacheOptions {
                threshold: Some(f64::NAN),
                ..opt(CachePolicy::FbCache)
            },
            "--cache-threshold",
        ),
        (
            CacheOptions {
                preset: Some("slow".into()),
                ..opt(CachePolicy::FbCache)
            },
            "--cache-threshold",
        ),
        (
            CacheOptions {
                max_skip: Some(2),
                ..opt(CachePolicy::TeaCache)
            },
            "--cache-max-skip",
        ),
        (
            CacheOptions {
                retention: Some(1.5),
                table: Some(CacheTable::MagRatios(vec![1.0; 4])),
                ..opt(CachePolicy::MagCache)
            },
            "--cache-retention",
        ),
        (
            CacheOptions {
                max_skip: Some(0),
                table: Some(CacheTable::MagRatios(vec![1.0; 4])),
                ..opt(CachePolicy::MagCache)
            },
            "--cache-max-skip",
        ),
        (
            CacheOptions {
                table: Some(CacheTable::MagRatios(vec![1.0; 4])),
                ..opt(CachePolicy::TeaCache)
            },
            "--cache-table",
        ),
        (
            CacheOptions {
                threshold: Some(0.1),
                ..opt(CachePolicy::None)
            },
            "--cache-threshold",
        ),
    ] {
        let e = o.resolve(&cfg, &p, 10).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(
            e.to_string().starts_with(&format!("{flag}:")),
            "{flag}: {e}"
        );
    }
}

#[test]
fn official_models_get_their_published_tables() {
    let p480 = Profile::custom(832, 480, 81, 512).unwrap();
    let p720 = Profile::custom(1280, 720, 81, 512).unwrap();
    assert_eq!(
        known_model(&DitConfig::t2v_1_3b(), &p480),
        Some(KnownModel::T2v1_3b)
    );
    assert_eq!(
        known_model(&DitConfig::t2v_14b(), &p720),
        Some(KnownModel::T2v14b)
    );
    assert_eq!(
        known_model(&DitConfig::i2v_14b(), &p480),
        Some(KnownModel::I2v14b480p)
    );
    assert_eq!(
        known_model(&DitConfig::i2v_14b(), &p720),
        Some(KnownModel::I2v14b720p)
    );
    assert_eq!(known_model(&tiny().0, &p480), None);
    for m in [
        KnownModel::T2v1_3b,
        KnownModel::T2v14b,
        KnownModel::I2v14b480p,
        KnownModel::I2v14b720p,
    ] {
        let r = presets::mag_ratios(m);
        let steps = if matches!(m, KnownModel::T2v1_3b | KnownModel::T2v14b) {
            50
        } else {
            40
        };
        assert_eq!(r.len(), 2 * steps, "{m:?}");
        assert_eq!(&r[..2], &[1.0, 1.0]);
    }
    let o = CacheOptions {
        policy: CachePolicy::MagCache,
        ..Default::default()
    };
    let plan = o
        .resolve(&DitConfig::t2v_1_3b(), &p480, 50)
        .unwrap()
        .unwrap();
    assert_eq!(
        (plan.threshold, plan.max_skip, plan.retention),
        (0.12, Some(4), Some(0.2))
    );
    assert_eq!(plan.preset.as_deref(), Some("default"));
    assert_eq!(plan.mag_ratios.as_ref().unwrap()[2], 1.0124);
    let o = CacheOptions {
        policy: CachePolicy::TeaCacheRet,
        preset: Some("fast".into()),
        ..Default::default()
    };
    let plan = o
        .resolve(&DitConfig::t2v_14b(), &p720, 50)
        .unwrap()
        .unwrap();
    assert_eq!(plan.threshold, 0.20);
    assert_eq!(plan.coefficients.unwrap()[0], -3.03318725e+05);
    // 20 steps of the 40-step I2V table: resampled.
    let o = CacheOptions {
        policy: CachePolicy::MagCache,
        ..Default::default()
    };
    let plan = o
        .resolve(&DitConfig::i2v_14b(), &p720, 20)
        .unwrap()
        .unwrap();
    assert_eq!(plan.mag_ratios.as_ref().unwrap().len(), 40);
    assert_eq!(plan.threshold, 0.24);
}

#[test]
fn a_threshold_argument_is_a_number_or_a_preset_name() {
    assert_eq!(parse_threshold("0.05").unwrap(), (Some(0.05), None));
    assert_eq!(parse_threshold("-1").unwrap(), (Some(-1.0), None));
    assert_eq!(
        parse_threshold("fast").unwrap(),
        (None, Some("fast".into()))
    );
    for bad in ["", "0.1x", "fast-ish", "1 2"] {
        let e = parse_threshold(bad).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
        assert!(e.to_string().starts_with("--cache-threshold"), "{e}");
    }
}

#[test]
fn residency_parses_and_needs_a_policy() {
    assert_eq!(CacheResidency::default(), CacheResidency::Auto);
    for r in CacheResidency::ALL {
        assert_eq!(r.name().parse::<CacheResidency>().unwrap(), r);
    }
    let e = "gpu".parse::<CacheResidency>().unwrap_err();
    assert!(e.to_string().contains("--cache-residency"), "{e}");
    // Without --cache, only the default is accepted.
    let mut o = CacheOptions::default();
    o.check_none().unwrap();
    o.residency = CacheResidency::Device;
    let e = o.check_none().unwrap_err();
    assert!(
        e.to_string()
            .contains("--cache-residency: given without --cache"),
        "{e}"
    );
    // The plan carries what was asked for.
    let (cfg, profile) = tiny();
    o.policy = CachePolicy::FbCache;
    let plan = o.resolve(&cfg, &profile, 4).unwrap().unwrap();
    assert_eq!(plan.residency, CacheResidency::Device);
}

#[test]
fn first_block_decisions_are_the_same_from_either_store() {
    // The host store's composed decision and the decision from sums (what
    // the device path reads back) agree, and a compute keeps the reference.
    let (cfg, profile) = tiny();
    let plan = CacheOptions {
        policy: CachePolicy::FbCache,
        threshold: Some(0.1),
        ..Default::default()
    }
    .resolve(&cfg, &profile, 3)
    .unwrap()
    .unwrap();
    let device = || CacheStore::Device {
        memory: Memory::Host,
        bytes: 8,
        scratch_bytes: 0,
    };
    let mut host = StepCache::new(&plan, 3, 1, CacheStore::host(1, 2, true), &[], &[]).unwrap();
    let mut dev = StepCache::new(&plan, 3, 1, device(), &[], &[]).unwrap();
    let tokens = [1.0f32, 2.0];
    // Step 0: no reference yet, both compute without sums.
    assert!(!dev.has_first_block_reference(0));
    assert!(host.decide_first_block(0, 0, &tokens, &[2.0, 4.0]).unwrap());
    assert!(dev.decide_first_block_from(0, 0, None).unwrap());
    // Step 1: r1 = [1.05, 2.1] vs ref [1, 2]: (0.15 / 3) = 0.05 ≤ 0.1 skips.
    let first = [2.05f32, 4.1];
    let sums = host.host_fb_sums(0, &tokens, &first).unwrap();
    assert!(dev.has_first_block_reference(0));
    assert!(!host.decide_first_block(1, 0, &tokens, &first).unwrap());
    assert!(!dev.decide_first_block_from(1, 0, sums).unwrap());
    // A branch with a reference needs its sums.
    assert!(dev.decide_first_block_from(2, 0, None).is_err());
    assert_eq!(host.record().branches, dev.record().branches);
    assert_eq!(dev.record().residency, Some(CacheResidency::Device));
    assert_eq!(dev.record().buffer_bytes, 8);
    // The host store's arithmetic is refused on the device store.
    let mut out = [0.0f32; 2];
    assert!(dev.apply(0, true, &tokens, &mut out).is_err());
}
