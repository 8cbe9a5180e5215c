//! Tests of `pickle`.

use super::*;

use super::build::P;

#[test]
fn reads_a_plain_dict_and_an_ordered_dict_with_metadata() {
    let p = P::start()
        .op(b'}')
        .op(b'q')
        .op(0)
        .op(b'(')
        .s("a")
        .tensor("0", 3)
        .s("b")
        .tensor("1", 4)
        .op(b'u')
        .op(b'.');
    let sd = load_state_dict(&p.0).unwrap();
    assert_eq!(sd.len(), 2);
    assert_eq!(sd[0].0, "a");
    assert_eq!(sd[1].1.storage_key, "1");
    assert_eq!(sd[1].1.shape, vec![4]);

    // OrderedDict + SETITEM + BUILD with a `_metadata` dict, as torch
    // writes `model.state_dict()` itself.
    let p = P::start()
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .s("w")
        .tensor("0", 2)
        .op(b's')
        .op(b'}')
        .s("_metadata")
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .s("")
        .op(b'}')
        .s("version")
        .int(1)
        .op(b's')
        .op(b's')
        .op(b's')
        .op(b'b')
        .op(b'.');
    let sd = load_state_dict(&p.0).unwrap();
    assert_eq!(sd.len(), 1);
    assert_eq!(sd[0].0, "w");
    assert_eq!(sd[0].1.dtype, DType::Float32);
}

#[test]
fn forbidden_global_is_refused_when_named() {
    let p = P::start()
        .global("os", "system")
        .s("echo pwned")
        .op(0x85)
        .op(b'R')
        .op(b'.');
    match load_state_dict(&p.0) {
        Err(PickleError::ForbiddenGlobal { module, name, pos }) => {
            assert_eq!((module.as_str(), name.as_str(), pos), ("os", "system", 2));
        }
        other => panic!("{other:?}"),
    }
    for (m, n) in [
        ("builtins", "eval"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch", "Tensor"),
        ("torch", "LongStorage"),
        ("collections", "OrderedDict "),
    ] {
        let p = P::start().global(m, n);
        assert!(
            matches!(
                load_state_dict(&p.0),
                Err(PickleError::ForbiddenGlobal { .. })
            ),
            "{m}.{n}"
        );
    }
}

#[test]
fn unsupported_opcodes_are_named() {
    for (code, name) in [
        (b'i', Some("INST")),
        (0x93, Some("STACK_GLOBAL")),
        (b'0', Some("POP")),
        (0xff, None),
    ] {
        let p = P::start().op(code);
        assert_eq!(
            load_state_dict(&p.0),
            Err(PickleError::UnsupportedOpcode { code, name, pos: 2 })
        );
    }
}

#[test]
fn malformed_pickles_are_errors_not_panics() {
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        P::start().0,
        P::start().op(b'.').0,
        P::start().op(b'R').0,
        P::start().op(b't').0,
        P::start().op(b'h').op(7).0,
        P::start().op(b'X').op(0xff).op(0xff).op(0xff).op(0x7f).0,
        P::start().op(b'(').op(b'}').op(b'.').0,
        P::start().op(b'}').s("k").int(1).op(b's').op(b'.').0,
        P::start()
            .op(b'}')
            .int(1)
            .tensor("0", 1)
            .op(b's')
            .op(b'.')
            .0,
        P::start()
            .op(b'}')
            .s("k")
            .tensor("0", 1)
            .s("k")
            .tensor("0", 1)
            .op(b's')
            .op(b's')
            .op(b'.')
            .0,
        P::start().op(b')').op(b'}').op(b'b').op(b'b').0,
        P::start()
            .global("torch", "FloatStorage")
            .op(b')')
            .op(b'R')
            .0,
        P::start().op(0x8a).op(9).0,
        P::start().op(b'c').0,
        // a mark frame may not be popped through
        P::start().op(b'}').op(b'(').op(b'.').0,
        P::start().op(b'}').op(b'(').int(1).op(b'u').op(b'.').0,
    ];
    for (i, c) in cases.iter().enumerate() {
        match load_state_dict(c) {
            Err(PickleError::Malformed { .. }) => {}
            other => panic!("case {i}: {other:?}"),
        }
    }
}

#[test]
fn long1_and_parameters() {
    // `_rebuild_parameter(_rebuild_tensor_v2(...), True, OrderedDict())`
    // with a LONG1 storage offset of 2**32.
    let mut p = P::start()
        .op(b'}')
        .s("p")
        .global("torch._utils", "_rebuild_parameter")
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b'(')
        .op(b'(')
        .s("storage")
        .global("torch", "BFloat16Storage")
        .s("7")
        .s("cuda:0")
        .int(1)
        .op(b't')
        .op(b'Q');
    p.0.extend([0x8a, 5, 0, 0, 0, 0, 1]);
    let p = p
        .op(b')')
        .op(b')')
        .op(0x89)
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .op(b't')
        .op(b'R')
        .op(0x88)
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .op(0x87)
        .op(b'R')
        .op(b's')
        .op(b'.');
    let sd = load_state_dict(&p.0).unwrap();
    let t = &sd[0].1;
    assert_eq!(t.dtype, DType::Bfloat16);
    assert_eq!(t.storage_offset, 1 << 32);
    assert_eq!(t.storage_location, "cuda:0");
    assert!(t.shape.is_empty() && t.requires_grad);
    let mut neg = P::start().0;
    neg.extend([0x8a, 2, 0x00, 0xff, b'.']);
    assert!(matches!(
        load_state_dict(&neg),
        Err(PickleError::Malformed { .. })
    ));
}

#[test]
fn deep_nesting_does_not_overflow() {
    let mut p = P::start().op(b')');
    for _ in 0..1_000_000 {
        p = p.op(0x85);
    }
    let p = p.op(b'.');
    assert!(matches!(
        load_state_dict(&p.0),
        Err(PickleError::Malformed { .. })
    ));
}
