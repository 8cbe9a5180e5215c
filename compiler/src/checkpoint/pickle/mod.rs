//! A restricted unpickler for the `data.pkl` of a `torch.save` state dict.
//!
//! It executes nothing. It understands the protocol-2 opcodes `torch.save`
//! emits for a flat state dict (see [`ALLOWED_OPCODES`]) and resolves only the
//! globals in [`ALLOWED_GLOBALS`], each to a fixed, built-in meaning:
//!
//! * `collections.OrderedDict` called with `()` → an empty dict;
//! * `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//!   requires_grad, hooks[, metadata])` → a tensor record;
//! * `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)` → the
//!   tensor;
//! * `torch.{Float,Half,BFloat16}Storage` → a storage dtype, used only inside
//!   the persistent id `('storage', StorageClass, key, location, numel)`.
//!
//! Any other opcode or global is an error naming it and its byte position;
//! the global is refused when it is *named* (`GLOBAL`), before anything could
//! call it. Nothing here recurses on the input, allocates by an untrusted count
//! before checking it against the input size, or panics on malformed bytes.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use wanrt_core::DType;

/// `(module, name)` of every global the unpickler resolves.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
];

/// Names of the opcodes the unpickler accepts.
pub const ALLOWED_OPCODES: &[&str] = &[
    "PROTO",
    "STOP",
    "MARK",
    "EMPTY_DICT",
    "EMPTY_LIST",
    "EMPTY_TUPLE",
    "TUPLE",
    "TUPLE1",
    "TUPLE2",
    "TUPLE3",
    "BINUNICODE",
    "BININT",
    "BININT1",
    "BININT2",
    "LONG1",
    "NONE",
    "NEWTRUE",
    "NEWFALSE",
    "BINPUT",
    "LONG_BINPUT",
    "BINGET",
    "LONG_BINGET",
    "GLOBAL",
    "REDUCE",
    "BINPERSID",
    "BUILD",
    "SETITEM",
    "SETITEMS",
    "APPEND",
    "APPENDS",
];

/// What went wrong, with the byte position in the pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickleError {
    /// An opcode outside [`ALLOWED_OPCODES`] (`name` is `None` for a byte
    /// that is no pickle opcode at all).
    UnsupportedOpcode {
        code: u8,
        name: Option<&'static str>,
        pos: usize,
    },
    /// A `GLOBAL` outside [`ALLOWED_GLOBALS`].
    ForbiddenGlobal {
        module: String,
        name: String,
        pos: usize,
    },
    /// Bytes that are not a well-formed state-dict pickle.
    Malformed { pos: usize, reason: String },
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PickleError::UnsupportedOpcode { code, name, pos } => write!(
                f,
                "pickle opcode {} (0x{code:02x}) at byte {pos} is not supported by the restricted unpickler",
                name.unwrap_or("<not a pickle opcode>")
            ),
            PickleError::ForbiddenGlobal { module, name, pos } => write!(
                f,
                "pickle global `{module}.{name}` at byte {pos} is forbidden (allowed: {})",
                ALLOWED_GLOBALS
                    .iter()
                    .map(|(m, n)| format!("{m}.{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            PickleError::Malformed { pos, reason } => {
                write!(f, "malformed pickle at byte {pos}: {reason}")
            }
        }
    }
}

impl std::error::Error for PickleError {}

/// One tensor as the pickle describes it (values unchecked beyond their
/// types; the archive reader checks them against the storages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRecord {
    pub dtype: DType,
    /// Storage key: the entry `<prefix>/data/<key>` of the archive.
    pub storage_key: String,
    /// Device the storage was saved from (`cpu`, `cuda:0`); informational.
    pub storage_location: String,
    /// Elements in the storage, as the persistent id says.
    pub storage_numel: i64,
    /// In elements.
    pub storage_offset: i64,
    pub shape: Vec<i64>,
    /// In elements.
    pub strides: Vec<i64>,
    pub requires_grad: bool,
}

/// The name of pickle opcode `code` (protocols 0–5), if it is one.
pub fn opcode_name(code: u8) -> Option<&'static str> {
    Some(match code {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// The functions and classes an allowed global resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callable {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(DType),
}

fn resolve_global(module: &str, name: &str) -> Option<Callable> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Callable::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Callable::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Callable::RebuildParameter,
        ("torch", "FloatStorage") => Callable::Storage(DType::Float32),
        ("torch", "HalfStorage") => Callable::Storage(DType::Float16),
        ("torch", "BFloat16Storage") => Callable::Storage(DType::Bfloat16),
        _ => return None,
    })
}

#[derive(Debug)]
struct StorageRef {
    dtype: DType,
    key: String,
    location: String,
    numel: i64,
}

type Items = Rc<RefCell<Vec<Value>>>;
type Pairs = Rc<RefCell<Vec<(Value, Value)>>>;

/// A pickled object. Containers are shared (`Rc`) because the memo aliases
/// them, and dicts/lists are mutable because SETITEMS/APPENDS fill them after
/// they were memoised, as in Python.
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Str(Rc<str>),
    Tuple(Rc<Vec<Value>>),
    List(Items),
    /// `dict` and `OrderedDict` alike (insertion order kept).
    Dict(Pairs),
    Global(Callable),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRecord>),
}

impl Clone for Value {
    fn clone(&self) -> Self {
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Tuple(t) => Value::Tuple(t.clone()),
            Value::List(l) => Value::List(l.clone()),
            Value::Dict(d) => Value::Dict(d.clone()),
            Value::Global(c) => Value::Global(*c),
            Value::Storage(s) => Value::Storage(s.clone()),
            Value::Tensor(t) => Value::Tensor(t.clone()),
        }
    }
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Moves the children of a uniquely owned container into `out`.
fn take_children(v: &mut Value, out: &mut Vec<Value>) {
    match v {
        Value::Tuple(rc) => {
            if let Some(items) = Rc::get_mut(rc) {
                out.append(items);
            }
        }
        Value::List(rc) => {
            if let Some(cell) = Rc::get_mut(rc) {
                out.append(cell.get_mut());
            }
        }
        Value::Dict(rc) => {
            if let Some(cell) = Rc::get_mut(rc) {
                for (k, x) in cell.get_mut().drain(..) {
                    out.push(k);
                    out.push(x);
                }
            }
        }
        _ => {}
    }
}

/// Iterative drop: a pickle of a million nested one-tuples must not overflow
/// the stack when it is freed.
impl Drop for Value {
    fn drop(&mut self) {
        let mut work = Vec::new();
        take_children(self, &mut work);
        while let Some(mut v) = work.pop() {
            take_children(&mut v, &mut work);
        }
    }
}

/// Longest `GLOBAL` module or name line accepted.
const MAX_GLOBAL_LINE: usize = 256;

/// Most values one pickle may create (every push counts, containers and
/// their items included). A torch state dict makes ~20 per tensor, so even
/// the 1,000-tensor CLIP needs ~20,000; the cap bounds the machine's memory
/// at ~100 MiB whatever the input (instead of ~47 bytes per input byte).
pub const MAX_VALUES: usize = 1 << 21;
/// Deepest stack and most open MARKs.
pub const MAX_STACK: usize = 1 << 16;
/// Most memo entries.
pub const MAX_MEMO: usize = 1 << 20;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Start of the opcode being executed, for error messages.
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Values created so far (bounded by [`MAX_VALUES`]).
    created: usize,
}

impl<'a> Machine<'a> {
    fn bad(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            pos: self.op_pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let data: &'a [u8] = self.data;
        match self.pos.checked_add(n) {
            Some(end) if end <= data.len() => {
                let s = &data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(self.bad(format!(
                "needs {n} more bytes, the pickle ends at byte {} (truncated?)",
                data.len()
            ))),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos.min(data.len())..];
        let Some(n) = rest
            .iter()
            .take(MAX_GLOBAL_LINE + 1)
            .position(|&b| b == b'\n')
        else {
            return Err(
                self.bad("GLOBAL argument is not a newline-terminated line of at most 256 bytes")
            );
        };
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| self.bad("GLOBAL argument is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    /// Bottom of the current mark frame: ops may not pop below it.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        self.created += 1;
        if self.created > MAX_VALUES {
            return Err(self.bad(format!(
                "more than {MAX_VALUES} values: not a state dict the unpickler accepts"
            )));
        }
        if self.stack.len() >= MAX_STACK {
            return Err(self.bad(format!("stack deeper than {MAX_STACK}")));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.bad("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.bad("stack underflow"))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.bad("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.bad("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.bad("no MARK to pop to"))?;
        if m > self.stack.len() {
            return Err(self.bad("MARK above the stack top"));
        }
        Ok(self.stack.split_off(m))
    }

    fn put(&mut self, idx: u32) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(self.bad(format!("more than {MAX_MEMO} memo entries")));
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn get(&mut self, idx: u32) -> Result<(), PickleError> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.bad(format!("memo key {idx} was never stored")))?;
        self.push(v)?;
        Ok(())
    }

    fn tuple(&mut self, n: usize) -> Result<(), PickleError> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop()?);
        }
        items.reverse();
        self.push(Value::Tuple(Rc::new(items)))?;
        Ok(())
    }

    fn global(&mut self) -> Result<(), PickleError> {
        let module = self.line()?;
        let name = self.line()?;
        match resolve_global(module, name) {
            Some(c) => {
                self.push(Value::Global(c))?;
                Ok(())
            }
            None => Err(PickleError::ForbiddenGlobal {
                module: module.to_string(),
                name: name.to_string(),
                pos: self.op_pos,
            }),
        }
    }

    fn ints(&self, v: &Value, what: &str) -> Result<Vec<i64>, PickleError> {
        let Value::Tuple(items) = v else {
            return Err(self.bad(format!("{what} is a {}, not a tuple", v.type_name())));
        };
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(self.bad(format!("{what} holds a {}, not an int", other.type_name()))),
            })
            .collect()
    }

    fn empty_dict_or_none(&self, v: &Value, what: &str) -> Result<(), PickleError> {
        match v {
            Value::None => Ok(()),
            Value::Dict(d) if d.borrow().is_empty() => Ok(()),
            other => Err(self.bad(format!(
                "{what} must be None or empty, found a {}{}",
                other.type_name(),
                if matches!(other, Value::Dict(_)) {
                    " with items"
                } else {
                    ""
                }
            ))),
        }
    }

    fn reduce(&mut self) -> Result<(), PickleError> {
        let args = self.pop()?;
        let func = self.pop()?;
        let Value::Tuple(args) = &args else {
            return Err(self.bad(format!(
                "REDUCE arguments are a {}, not a tuple",
                args.type_name()
            )));
        };
        let Value::Global(func) = func else {
            return Err(self.bad(format!(
                "REDUCE on a {}, which is not callable",
                func.type_name()
            )));
        };
        let out = match func {
            Callable::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.bad("collections.OrderedDict called with arguments"));
                }
                Value::Dict(Rc::new(RefCell::new(Vec::new())))
            }
            Callable::RebuildTensorV2 => {
                if !(6..=7).contains(&args.len()) {
                    return Err(self.bad(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    )));
                }
                let Value::Storage(storage) = &args[0] else {
                    return Err(self.bad(format!(
                        "_rebuild_tensor_v2: storage is a {}, not a persistent storage id",
                        args[0].type_name()
                    )));
                };
                let Value::Int(offset) = args[1] else {
                    return Err(self.bad("_rebuild_tensor_v2: storage offset is not an int"));
                };
                let shape = self.ints(&args[2], "_rebuild_tensor_v2 size")?;
                let strides = self.ints(&args[3], "_rebuild_tensor_v2 stride")?;
                let Value::Bool(requires_grad) = args[4] else {
                    return Err(self.bad("_rebuild_tensor_v2: requires_grad is not a bool"));
                };
                self.empty_dict_or_none(&args[5], "_rebuild_tensor_v2 backward_hooks")?;
                if let Some(meta) = args.get(6) {
                    self.empty_dict_or_none(meta, "_rebuild_tensor_v2 metadata")?;
                }
                if shape.len() != strides.len() {
                    return Err(self.bad(format!(
                        "_rebuild_tensor_v2: size has {} dims, stride {}",
                        shape.len(),
                        strides.len()
                    )));
                }
                Value::Tensor(Rc::new(TensorRecord {
                    dtype: storage.dtype,
                    storage_key: storage.key.clone(),
                    storage_location: storage.location.clone(),
                    storage_numel: storage.numel,
                    storage_offset: offset,
                    shape,
                    strides,
                    requires_grad,
                }))
            }
            Callable::RebuildParameter => {
                if args.len() != 3 {
                    return Err(self.bad(format!(
                        "_rebuild_parameter takes 3 arguments, got {}",
                        args.len()
                    )));
                }
                let Value::Tensor(t) = &args[0] else {
                    return Err(self.bad("_rebuild_parameter: data is not a tensor"));
                };
                let Value::Bool(requires_grad) = args[1] else {
                    return Err(self.bad("_rebuild_parameter: requires_grad is not a bool"));
                };
                self.empty_dict_or_none(&args[2], "_rebuild_parameter backward_hooks")?;
                let mut t = TensorRecord::clone(t);
                t.requires_grad = requires_grad;
                Value::Tensor(Rc::new(t))
            }
            Callable::Storage(_) => {
                return Err(self.bad("a storage class may only appear in a persistent id"));
            }
        };
        self.push(out)?;
        Ok(())
    }

    fn persid(&mut self) -> Result<(), PickleError> {
        let pid = self.pop()?;
        let Value::Tuple(t) = &pid else {
            return Err(self.bad(format!(
                "persistent id is a {}, not a tuple",
                pid.type_name()
            )));
        };
        let shape_ok = t.len() == 5 && matches!(&t[0], Value::Str(s) if &**s == "storage");
        if !shape_ok {
            return Err(
                self.bad("persistent id is not ('storage', StorageClass, key, location, numel)")
            );
        }
        let Value::Global(Callable::Storage(dtype)) = t[1] else {
            return Err(self.bad("persistent id: second item is not a storage class"));
        };
        let (Value::Str(key), Value::Str(location), Value::Int(numel)) = (&t[2], &t[3], &t[4])
        else {
            return Err(self.bad("persistent id: key/location must be str and numel an int"));
        };
        let s = StorageRef {
            dtype,
            key: key.to_string(),
            location: location.to_string(),
            numel: *numel,
        };
        self.push(Value::Storage(Rc::new(s)))?;
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.bad("SETITEMS with an odd number of items"));
        }
        let Value::Dict(d) = self.top()? else {
            return Err(self.bad("SETITEM(S) target is not a dict"));
        };
        let d = d.clone();
        let mut d = d
            .try_borrow_mut()
            .map_err(|_| self.bad("dict is being modified"))?;
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn append_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let Value::List(l) = self.top()? else {
            return Err(self.bad("APPEND(S) target is not a list"));
        };
        let l = l.clone();
        let mut l = l
            .try_borrow_mut()
            .map_err(|_| self.bad("list is being modified"))?;
        l.extend(items);
        Ok(())
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self
                .take(1)
                .map_err(|_| self.bad("the pickle ends without STOP (truncated?)"))?[0];
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.bad(format!("unknown pickle protocol {v}")));
                    }
                }
                b'.' => {
                    let v = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(self.bad("STOP with items left on the stack"));
                    }
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(self.bad(format!("more than {MAX_STACK} open MARKs")));
                    }
                    self.marks.push(self.stack.len());
                }
                b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))))?,
                b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new()))))?,
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))?;
                }
                0x85 => self.tuple(1)?,
                0x86 => self.tuple(2)?,
                0x87 => self.tuple(3)?,
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    let s =
                        std::str::from_utf8(b).map_err(|_| self.bad("BINUNICODE is not UTF-8"))?;
                    self.push(Value::Str(Rc::from(s)))?;
                }
                b'J' => {
                    let b = self.take(4)?;
                    self.push(Value::Int(
                        i32::from_le_bytes([b[0], b[1], b[2], b[3]]).into(),
                    ))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))?;
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    if n > 8 {
                        return Err(self.bad(format!("LONG1 of {n} bytes does not fit 64 bits")));
                    }
                    let b = self.take(n)?;
                    let mut buf = [0u8; 8];
                    buf[..n].copy_from_slice(b);
                    if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        buf[n..].fill(0xff);
                    }
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'q' => {
                    let i = self.u8()?;
                    self.put(i.into())?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.get(i.into())?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.get(i)?;
                }
                b'c' => self.global()?,
                b'R' => self.reduce()?,
                b'Q' => self.persid()?,
                b'b' => {
                    // OrderedDict.__reduce__ passes the instance __dict__
                    // (`_metadata` of a state dict) as BUILD state: ignored.
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        return Err(self.bad(format!(
                            "BUILD on a {}; only an OrderedDict may take state",
                            self.top()?.type_name()
                        )));
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append_items(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append_items(items)?;
                }
                code => {
                    return Err(PickleError::UnsupportedOpcode {
                        code,
                        name: opcode_name(code),
                        pos: self.op_pos,
                    });
                }
            }
        }
    }
}

/// Parses a state-dict pickle: a `dict` or `OrderedDict` from `str` to
/// tensor, in file order.
pub fn load_state_dict(pkl: &[u8]) -> Result<Vec<(String, TensorRecord)>, PickleError> {
    let mut m = Machine {
        data: pkl,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        created: 0,
    };
    let root = m.run()?;
    let end = m.pos;
    let bad = |reason: String| PickleError::Malformed { pos: end, reason };
    let Value::Dict(d) = &root else {
        return Err(bad(format!(
            "the pickle holds a {}, not a state dict",
            root.type_name()
        )));
    };
    let d = d
        .try_borrow()
        .map_err(|_| bad("state dict is borrowed".into()))?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let Value::Str(name) = k else {
            return Err(bad(format!(
                "state dict key is a {}, not a str",
                k.type_name()
            )));
        };
        let Value::Tensor(t) = v else {
            return Err(bad(format!(
                "state dict entry '{name}' is a {}, not a tensor",
                v.type_name()
            )));
        };
        if !seen.insert(name.clone()) {
            return Err(bad(format!("state dict key '{name}' appears twice")));
        }
        out.push((name.to_string(), TensorRecord::clone(t)));
    }
    Ok(out)
}

/// Test helper: builds pickles opcode by opcode.
#[cfg(test)]
pub(crate) mod build {
    #[derive(Default)]
    pub(crate) struct P(pub(crate) Vec<u8>);

    impl P {
        pub(crate) fn op(mut self, b: u8) -> Self {
            self.0.push(b);
            self
        }
        pub(crate) fn s(mut self, s: &str) -> Self {
            self.0.push(b'X');
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        pub(crate) fn int(mut self, v: u8) -> Self {
            self.0.extend([b'K', v]);
            self
        }
        pub(crate) fn global(mut self, m: &str, n: &str) -> Self {
            self.0.push(b'c');
            self.0.extend(format!("{m}\n{n}\n").bytes());
            self
        }
        pub(crate) fn int32(mut self, v: i32) -> Self {
            self.0.push(b'J');
            self.0.extend(v.to_le_bytes());
            self
        }
        /// A tuple of ints (MARK … TUPLE).
        pub(crate) fn ints(self, v: &[i32]) -> Self {
            let mut p = self.op(b'(');
            for &x in v {
                p = p.int32(x);
            }
            p.op(b't')
        }
        /// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel),
        /// offset, shape, stride, False, OrderedDict())`
        pub(crate) fn view(
            self,
            class: &str,
            key: &str,
            numel: i32,
            offset: i32,
            shape: &[i32],
            stride: &[i32],
        ) -> Self {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(b'(')
                .op(b'(')
                .s("storage")
                .global("torch", class)
                .s(key)
                .s("cpu")
                .int32(numel)
                .op(b't')
                .op(b'Q')
                .int32(offset)
                .ints(shape)
                .ints(stride)
                .op(0x89)
                .global("collections", "OrderedDict")
                .op(b')')
                .op(b'R')
                .op(b't')
                .op(b'R')
        }
        /// A contiguous 1-D f32 tensor of `n` elements over the whole storage.
        pub(crate) fn tensor(self, key: &str, n: u8) -> Self {
            let n = i32::from(n);
            self.view("FloatStorage", key, n, 0, &[n], &[1])
        }
        pub(crate) fn start() -> Self {
            P::default().op(0x80).op(2)
        }
    }
}

#[cfg(test)]
mod tests;
