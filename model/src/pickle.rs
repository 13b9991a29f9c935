//! A pickle reader for the `data.pkl` of a `torch.save` checkpoint: protocols 2–5, the opcodes
//! a state dict is written with, and nothing that runs code.
//!
//! Unpickling in Python *executes* the file: `GLOBAL` imports any callable and `REDUCE` calls
//! it. Here `GLOBAL`/`STACK_GLOBAL` only name one of a fixed list ([`Global`]: `OrderedDict`,
//! torch's tensor and parameter rebuilders, storage types and dtypes), and `REDUCE`/`NEWOBJ`
//! only build what those names stand for: an empty dict, a tensor record, the tensor inside a
//! parameter. Any other global (`posix.system`, `builtins.eval`, a model class) is refused the
//! moment it is named, before anything could use it; no opcode here calls, imports or evaluates
//! anything. `BINPERSID` turns torch's `('storage', type, key, location, numel)` into a
//! [`Storage`]; `BUILD` is accepted on dicts (torch sets `_metadata` that way) and ignored.
//!
//! Objects live in an arena and values name them by index ([`Value::Obj`]), so a memo lookup
//! copies a handle: shared objects stay shared (as in Python), a cycle is harmless, dropping
//! is flat, and memory grows at most linearly with the input. Lengths are checked against the
//! bytes left, the memo, mark nesting and object count are bounded, and malformed input is an
//! error naming the opcode and its offset, never a panic.

use crate::weights::DiskDType;
use std::collections::{HashMap, HashSet};

/// Most memo entries a pickle may store.
pub const MAX_MEMO: usize = 10_000_000;
/// Deepest nesting of `MARK`s.
pub const MAX_MARKS: usize = 1000;
/// Most objects (strings, containers, tensors) one pickle may build.
pub const MAX_OBJECTS: usize = 1 << 24;

/// One value on the stack: scalars inline, everything else an index into [`Pickle`]'s arena.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(usize),
}

/// What a [`Value::Obj`] names.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// In pickle order; a repeated key is kept twice (readers take the last).
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(Box<Storage>),
    Tensor(Box<TensorRecord>),
    /// Only when listing globals ([`globals`]): what a refused global named `module.name` would
    /// have built. Never produced by [`parse`].
    Opaque(String),
}

/// The globals a checkpoint may name; each is data, never called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`: reduced with `()` to an empty dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor(storage, offset, size, stride)`.
    RebuildTensor,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter(data, requires_grad, hooks)`: the tensor `data`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(data, requires_grad, hooks, state)`.
    RebuildParameterWithState,
    /// `torch.FloatStorage` & co (element type), or `torch.UntypedStorage` (`None`: bytes).
    StorageType(Option<DiskDType>),
    /// `torch.float32` & co.
    DType(DiskDType),
}

/// A storage named by a persistent id: `<archive>/data/<key>` holds its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Storage {
    /// The element type; `None` for an untyped (byte) storage.
    pub dtype: Option<DiskDType>,
    pub key: String,
    pub location: String,
    /// Elements (bytes when untyped).
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` would build it: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRecord {
    pub storage: Storage,
    /// In elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// In elements.
    pub stride: Vec<usize>,
}

/// A parsed pickle: the arena of objects and the root value.
#[derive(Debug)]
pub struct Pickle {
    objects: Vec<Object>,
    pub root: Value,
    /// Every global named, as `module.name`, in order of first appearance.
    pub globals: Vec<String>,
}

impl Pickle {
    pub fn object(&self, v: Value) -> Option<&Object> {
        object(&self.objects, v)
    }
    pub fn str(&self, v: Value) -> Option<&str> {
        match self.object(v) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn dict(&self, v: Value) -> Option<&[(Value, Value)]> {
        match self.object(v) {
            Some(Object::Dict(d)) => Some(d),
            _ => None,
        }
    }
    pub fn tensor(&self, v: Value) -> Option<&TensorRecord> {
        match self.object(v) {
            Some(Object::Tensor(t)) => Some(t),
            _ => None,
        }
    }
    /// What kind of value `v` is, for messages: `int`, `dict`, `tensor`, …
    pub fn kind(&self, v: Value) -> &'static str {
        kind(&self.objects, v)
    }
}

fn object(objects: &[Object], v: Value) -> Option<&Object> {
    match v {
        Value::Obj(i) => objects.get(i),
        _ => None,
    }
}

fn kind(objects: &[Object], v: Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Obj(_) => match object(objects, v) {
            Some(Object::Str(_)) => "str",
            Some(Object::Bytes(_)) => "bytes",
            Some(Object::Tuple(_)) => "tuple",
            Some(Object::List(_)) => "list",
            Some(Object::Dict(_)) => "dict",
            Some(Object::Global(_)) => "global",
            Some(Object::Storage(_)) => "storage",
            Some(Object::Tensor(_)) => "tensor",
            Some(Object::Opaque(_)) | None => "object",
        },
    }
}

/// Parses `data`, refusing every global outside [`Global`].
pub fn parse(data: &[u8]) -> Result<Pickle, String> {
    Machine::new(data, false).run()
}

/// The globals `data` names (as `module.name`), refused ones included, without executing
/// anything: what a refused global would build becomes an opaque placeholder.
pub fn globals(data: &[u8]) -> Result<Vec<String>, String> {
    Ok(Machine::new(data, true).run()?.globals)
}

/// `module.name` as an allowed global.
fn resolve(module: &str, name: &str) -> Option<Global> {
    use DiskDType::*;
    let storage = |n: &str| -> Option<DiskDType> {
        Some(match n {
            "FloatStorage" => F32,
            "HalfStorage" => F16,
            "BFloat16Storage" => BF16,
            "DoubleStorage" => Other("F64", 8),
            "LongStorage" => Other("I64", 8),
            "IntStorage" => Other("I32", 4),
            "ShortStorage" => Other("I16", 2),
            "CharStorage" => Other("I8", 1),
            "ByteStorage" => Other("U8", 1),
            "BoolStorage" => Other("BOOL", 1),
            _ => return None,
        })
    };
    let dtype = |n: &str| -> Option<DiskDType> {
        Some(match n {
            "float32" | "float" => F32,
            "float16" | "half" => F16,
            "bfloat16" => BF16,
            "float64" | "double" => Other("F64", 8),
            "int64" | "long" => Other("I64", 8),
            "int32" | "int" => Other("I32", 4),
            "int16" | "short" => Other("I16", 2),
            "int8" => Other("I8", 1),
            "uint8" => Other("U8", 1),
            "bool" => Other("BOOL", 1),
            _ => return None,
        })
    };
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch" | "torch.storage", "UntypedStorage" | "TypedStorage") => Global::StorageType(None),
        // Checkpoints of CUDA tensors from PyTorch < 2 name `torch.cuda.FloatStorage`.
        ("torch" | "torch.cuda", n) if storage(n).is_some() => Global::StorageType(storage(n)),
        ("torch", n) => Global::DType(dtype(n)?),
        _ => return None,
    })
}

mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const LIST: u8 = b'l';
    pub const DICT: u8 = b'd';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES8: u8 = 0x8e;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BINFLOAT: u8 = b'G';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const NEWOBJ: u8 = 0x81;
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each open `MARK`; nothing below the innermost one can be popped.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
    globals: Vec<String>,
    seen: HashSet<String>,
    /// Listing globals: refused ones become [`Object::Opaque`] instead of an error.
    listing: bool,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], listing: bool) -> Machine<'a> {
        Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), objects: Vec::new(), globals: Vec::new(), seen: HashSet::new(), listing }
    }

    fn run(mut self) -> Result<Pickle, String> {
        loop {
            let at = self.pos;
            let code = *self.data.get(at).ok_or_else(|| format!("pickle ends at offset {at} without STOP (truncated)"))?;
            self.pos += 1;
            match self.step(code) {
                Ok(true) => {}
                Ok(false) => {
                    let root = self.pop()?;
                    return Ok(Pickle { objects: self.objects, root, globals: self.globals });
                }
                Err(e) => return Err(format!("pickle offset {at}, opcode 0x{code:02x}: {e}")),
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(format!("needs {n} bytes but {left} are left (truncated or a lying length)"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn len_u8(&mut self) -> Result<usize, String> {
        Ok(self.bytes::<1>()?[0] as usize)
    }
    fn len_u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.bytes()?) as usize)
    }
    fn len_u64(&mut self) -> Result<usize, String> {
        usize::try_from(u64::from_le_bytes(self.bytes()?)).map_err(|_| "a length beyond the address space".to_string())
    }
    /// One `\n`-terminated line (the arguments of `GLOBAL`).
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("a line without its newline (truncated)")?;
        self.pos += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }
    fn pop(&mut self) -> Result<Value, String> {
        if self.stack.len() <= self.floor() {
            return Err("the stack is empty (above the last MARK)".into());
        }
        self.stack.pop().ok_or_else(|| "the stack is empty".into())
    }
    fn top(&self) -> Result<Value, String> {
        if self.stack.len() <= self.floor() {
            return Err("the stack is empty (above the last MARK)".into());
        }
        self.stack.last().copied().ok_or_else(|| "the stack is empty".into())
    }
    /// The values pushed since the innermost `MARK`, which is closed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("no MARK to close")?;
        Ok(self.stack.split_off(m))
    }
    fn new_obj(&mut self, o: Object) -> Result<Value, String> {
        if self.objects.len() >= MAX_OBJECTS {
            return Err(format!("more than {MAX_OBJECTS} objects"));
        }
        self.objects.push(o);
        Ok(Value::Obj(self.objects.len() - 1))
    }
    fn push_obj(&mut self, o: Object) -> Result<(), String> {
        let v = self.new_obj(o)?;
        self.stack.push(v);
        Ok(())
    }
    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let v = self.top()?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(format!("more than {MAX_MEMO} memo entries"));
        }
        self.memo.insert(key, v);
        Ok(())
    }
    fn memo_get(&mut self, key: u32) -> Result<(), String> {
        let v = *self.memo.get(&key).ok_or_else(|| format!("memo entry {key} was never stored"))?;
        self.stack.push(v);
        Ok(())
    }
    /// The list or dict `v` names, to add to it.
    fn container(&mut self, v: Value, want: &str) -> Result<&mut Object, String> {
        let kind = self.kind(v);
        match v {
            Value::Obj(i) if matches!(self.objects.get(i), Some(Object::List(_) | Object::Dict(_))) => Ok(&mut self.objects[i]),
            _ => Err(format!("expects a {want} but finds a {kind}")),
        }
    }
    fn kind(&self, v: Value) -> &'static str {
        kind(&self.objects, v)
    }
    fn object(&self, v: Value) -> Option<&Object> {
        object(&self.objects, v)
    }
    fn str_of(&self, v: Value) -> Option<&str> {
        match self.object(v) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn items(&self, v: Value) -> Option<&[Value]> {
        match self.object(v) {
            Some(Object::Tuple(t)) => Some(t),
            _ => None,
        }
    }
    fn global_of(&self, v: Value) -> Option<Global> {
        match self.object(v) {
            Some(Object::Global(g)) => Some(*g),
            _ => None,
        }
    }

    fn global(&mut self, module: String, name: String) -> Result<(), String> {
        let full = format!("{module}.{name}");
        if self.seen.insert(full.clone()) {
            self.globals.push(full.clone());
        }
        match resolve(&module, &name) {
            Some(g) => self.push_obj(Object::Global(g)),
            None if self.listing => self.push_obj(Object::Opaque(full)),
            None => Err(format!(
                "the pickle names `{full}`, which is not a tensor, storage or container type: the checkpoint wants to run code and is refused (nothing was executed; only state dicts of tensors load)"
            )),
        }
    }

    /// One opcode; `Ok(false)` at `STOP`.
    fn step(&mut self, code: u8) -> Result<bool, String> {
        use op::*;
        match code {
            PROTO => {
                let v = self.bytes::<1>()?[0];
                if !(2..=5).contains(&v) {
                    return Err(format!("pickle protocol {v} is not supported (2 to 5 are)"));
                }
            }
            FRAME => {
                self.take(8)?; // frames only group opcodes for buffered readers
            }
            STOP => return Ok(false),
            MARK => {
                if self.marks.len() >= MAX_MARKS {
                    return Err(format!("MARKs nest deeper than {MAX_MARKS}"));
                }
                self.marks.push(self.stack.len());
            }
            POP => {
                if self.stack.len() > self.floor() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            POP_MARK => {
                self.pop_mark()?;
            }
            DUP => {
                let v = self.top()?;
                self.stack.push(v);
            }
            EMPTY_DICT => self.push_obj(Object::Dict(Vec::new()))?,
            EMPTY_LIST => self.push_obj(Object::List(Vec::new()))?,
            EMPTY_TUPLE => self.push_obj(Object::Tuple(Vec::new()))?,
            TUPLE => {
                let items = self.pop_mark()?;
                self.push_obj(Object::Tuple(items))?;
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let n = (code - TUPLE1 + 1) as usize;
                let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
                items.reverse();
                self.push_obj(Object::Tuple(items))?;
            }
            LIST => {
                let items = self.pop_mark()?;
                self.push_obj(Object::List(items))?;
            }
            DICT => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push_obj(Object::Dict(pairs))?;
            }
            APPEND | APPENDS => {
                let items = if code == APPEND { vec![self.pop()?] } else { self.pop_mark()? };
                let target = self.top()?;
                match self.container(target, "list")? {
                    Object::List(l) => l.extend(items),
                    _ => return Err("appends to a dict".into()),
                }
            }
            SETITEM | SETITEMS => {
                let items = if code == SETITEM {
                    let v = self.pop()?;
                    vec![self.pop()?, v]
                } else {
                    self.pop_mark()?
                };
                let pairs = pairs(items)?;
                let target = self.top()?;
                match self.container(target, "dict")? {
                    Object::Dict(d) => d.extend(pairs),
                    _ => return Err("sets items of a list".into()),
                }
            }
            BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 | BINSTRING | SHORT_BINSTRING => {
                let n = match code {
                    SHORT_BINUNICODE | SHORT_BINSTRING => self.len_u8()?,
                    BINUNICODE8 => self.len_u64()?,
                    _ => self.len_u32()?,
                };
                let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                self.push_obj(Object::Str(s))?;
            }
            BINBYTES | SHORT_BINBYTES | BINBYTES8 => {
                let n = match code {
                    SHORT_BINBYTES => self.len_u8()?,
                    BINBYTES8 => self.len_u64()?,
                    _ => self.len_u32()?,
                };
                let b = self.take(n)?.to_vec();
                self.push_obj(Object::Bytes(b))?;
            }
            BININT => {
                let v = i32::from_le_bytes(self.bytes()?);
                self.stack.push(Value::Int(v as i64));
            }
            BININT1 => {
                let v = self.bytes::<1>()?[0];
                self.stack.push(Value::Int(v as i64));
            }
            BININT2 => {
                let v = u16::from_le_bytes(self.bytes()?);
                self.stack.push(Value::Int(v as i64));
            }
            LONG1 => {
                let n = self.len_u8()?;
                if n > 8 {
                    return Err(format!("LONG1 of {n} bytes does not fit 64 bits"));
                }
                let b = self.take(n)?;
                let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 };
                let mut le = [fill; 8];
                le[..n].copy_from_slice(b);
                self.stack.push(Value::Int(i64::from_le_bytes(le)));
            }
            NONE => self.stack.push(Value::None),
            NEWTRUE => self.stack.push(Value::Bool(true)),
            NEWFALSE => self.stack.push(Value::Bool(false)),
            BINFLOAT => {
                let v = f64::from_be_bytes(self.bytes()?);
                self.stack.push(Value::Float(v));
            }
            BINPUT => {
                let k = self.bytes::<1>()?[0];
                self.memo_put(k as u32)?;
            }
            LONG_BINPUT => {
                let k = u32::from_le_bytes(self.bytes()?);
                self.memo_put(k)?;
            }
            MEMOIZE => {
                let k = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                self.memo_put(k)?;
            }
            BINGET => {
                let k = self.bytes::<1>()?[0];
                self.memo_get(k as u32)?;
            }
            LONG_BINGET => {
                let k = u32::from_le_bytes(self.bytes()?);
                self.memo_get(k)?;
            }
            GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(module, name)?;
            }
            STACK_GLOBAL => {
                let (name, module) = (self.pop()?, self.pop()?);
                match (self.str_of(module), self.str_of(name)) {
                    (Some(m), Some(n)) => {
                        let (m, n) = (m.to_string(), n.to_string());
                        self.global(m, n)?;
                    }
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            BINPERSID => {
                let pid = self.pop()?;
                let storage = self.storage(pid);
                match storage {
                    Ok(s) => self.push_obj(Object::Storage(Box::new(s)))?,
                    Err(_) if self.listing => self.push_obj(Object::Opaque("persistent id".into()))?,
                    Err(e) => return Err(e),
                }
            }
            REDUCE | NEWOBJ => {
                let (args, callable) = (self.pop()?, self.pop()?);
                let built = if code == REDUCE { self.reduce(callable, args) } else { self.newobj(callable) };
                match built {
                    Ok(v) => self.stack.push(v),
                    Err(_) if self.listing => self.push_obj(Object::Opaque("reduced object".into()))?,
                    Err(e) => return Err(e),
                }
            }
            BUILD => {
                let _state = self.pop()?;
                let target = self.top()?;
                if !self.listing && self.kind(target) != "dict" {
                    return Err(format!("BUILD (setting the state of an object) on a {} is not supported", self.kind(target)));
                }
            }
            _ => return Err("unknown or unsupported opcode".into()),
        }
        Ok(true)
    }

    /// torch's persistent id: `('storage', storage_type, key, location, numel)`.
    fn storage(&self, pid: Value) -> Result<Storage, String> {
        let bad = || "BINPERSID expects ('storage', storage type, key, location, numel)".to_string();
        let t = self.items(pid).ok_or_else(bad)?;
        let [tag, ty, key, location, numel] = t else { return Err(bad()) };
        if self.str_of(*tag) != Some("storage") {
            return Err(bad());
        }
        let Some(Global::StorageType(dtype)) = self.global_of(*ty) else { return Err(bad()) };
        // The key is a string in every zip checkpoint; accept an int too.
        let key = match (self.str_of(*key), key) {
            (Some(s), _) => s.to_string(),
            (None, Value::Int(i)) => i.to_string(),
            _ => return Err(bad()),
        };
        let location = self.str_of(*location).unwrap_or("?").to_string();
        let Value::Int(numel) = *numel else { return Err(bad()) };
        let numel = u64::try_from(numel).map_err(|_| format!("storage `{key}` has {numel} elements"))?;
        Ok(Storage { dtype, key, location, numel })
    }

    fn sizes(&self, v: Value, what: &str) -> Result<Vec<usize>, String> {
        let t = self.items(v).ok_or_else(|| format!("the tensor's {what} is not a tuple"))?;
        t.iter()
            .map(|x| match *x {
                Value::Int(i) => usize::try_from(i).map_err(|_| format!("the tensor's {what} holds {i}")),
                _ => Err(format!("the tensor's {what} holds a non-integer")),
            })
            .collect()
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        let g = self.global_of(callable).ok_or_else(|| format!("REDUCE calls a {}, not an allowed global", self.kind(callable)))?;
        let args = self.items(args).ok_or("REDUCE's arguments are not a tuple")?.to_vec();
        match (g, args.as_slice()) {
            (Global::OrderedDict, []) => self.new_obj(Object::Dict(Vec::new())),
            (Global::RebuildTensor, [storage, offset, size, stride])
            | (Global::RebuildTensorV2, [storage, offset, size, stride, _, _] | [storage, offset, size, stride, _, _, _]) => {
                let storage = match self.object(*storage) {
                    Some(Object::Storage(s)) => (**s).clone(),
                    _ => return Err("the tensor's storage is not a persistent storage".into()),
                };
                let Value::Int(offset) = *offset else { return Err("the tensor's storage offset is not an integer".into()) };
                let offset = usize::try_from(offset).map_err(|_| format!("the tensor's storage offset is {offset}"))?;
                let (shape, stride) = (self.sizes(*size, "size")?, self.sizes(*stride, "stride")?);
                if shape.len() != stride.len() {
                    return Err(format!("the tensor's size {shape:?} and stride {stride:?} differ in length"));
                }
                self.new_obj(Object::Tensor(Box::new(TensorRecord { storage, offset, shape, stride })))
            }
            (Global::RebuildParameter, [data, _, _]) | (Global::RebuildParameterWithState, [data, _, _, _]) if matches!(self.object(*data), Some(Object::Tensor(_))) => Ok(*data),
            (g, a) => Err(format!("REDUCE of {g:?} with {} arguments is not supported", a.len())),
        }
    }

    /// `cls.__new__(cls, *args)`: only `OrderedDict`, which starts empty.
    fn newobj(&mut self, cls: Value) -> Result<Value, String> {
        match self.global_of(cls) {
            Some(Global::OrderedDict) => self.new_obj(Object::Dict(Vec::new())),
            other => Err(format!("NEWOBJ of {other:?} is not supported")),
        }
    }
}

/// `[k0, v0, k1, v1, …]` as pairs.
fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    let chunks = items.chunks_exact(2);
    if !chunks.remainder().is_empty() {
        return Err(format!("{} values cannot be key-value pairs", items.len()));
    }
    Ok(chunks.map(|c| (c[0], c[1])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_containers_and_memo() {
        // {'a': [1, -2, 300, 2**40, None, True], 'b': ('x', 1.5), 'c': <memo 'a's list>}
        let mut p = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a', b']', b'q', 0, b'(', b'K', 1, b'J'];
        p.extend((-2i32).to_le_bytes());
        p.extend([b'M', 44, 1, 0x8a, 6, 0, 0, 0, 0, 0, 1, b'N', 0x88, b'e']);
        p.extend([0x8c, 1, b'b', 0x8c, 1, b'x', b'G']);
        p.extend(1.5f64.to_be_bytes());
        p.extend([0x86, 0x8c, 1, b'c', b'h', 0, b'u', b'.']);
        let pk = parse(&p).unwrap();
        let d = pk.dict(pk.root).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(pk.str(d[0].0), Some("a"));
        let Some(Object::List(l)) = pk.object(d[0].1) else { panic!("{:?}", pk.object(d[0].1)) };
        assert_eq!(l, &[Value::Int(1), Value::Int(-2), Value::Int(300), Value::Int(1 << 40), Value::None, Value::Bool(true)]);
        let Some(Object::Tuple(t)) = pk.object(d[1].1) else { panic!() };
        assert_eq!((pk.str(t[0]), t[1]), (Some("x"), Value::Float(1.5)));
        assert_eq!(d[2].1, d[0].1, "the memo shares the list");
    }

    #[test]
    fn refusals_and_errors() {
        let e = parse(b"\x80\x02cposix\nsystem\nq\x00.").unwrap_err();
        assert!(e.contains("`posix.system`") && e.contains("refused"), "{e}");
        let e = parse(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").unwrap_err();
        assert!(e.contains("`builtins.eval`"), "{e}");
        assert_eq!(globals(b"\x80\x02cposix\nsystem\nX\x01\x00\x00\x00x\x85R.").unwrap(), ["posix.system"]);
        let e = parse(b"\x80\x02K\x01\xff.").unwrap_err();
        assert_eq!(e, "pickle offset 4, opcode 0xff: unknown or unsupported opcode");
        assert!(parse(b"\x80\x02X\xff\xff\xff\x7fab.").unwrap_err().contains("truncated"));
        assert!(parse(b"\x80\x02h\x05.").unwrap_err().contains("memo entry 5"));
        assert!(parse(b"\x80\x02(s.").is_err());
        assert!(parse(b"\x80\x02(K\x01").unwrap_err().contains("without STOP"));
        assert!(parse(&[b'('; 2000]).unwrap_err().contains("nest deeper"));
        // A million nested tuples: no recursion anywhere, in parsing or dropping.
        let mut deep = b"\x80\x02)".to_vec();
        deep.extend(vec![0x85; 1_000_000]);
        deep.push(b'.');
        assert!(matches!(parse(&deep).unwrap().object(Value::Obj(1_000_000)), Some(Object::Tuple(_))));
        // Only what was pushed after the innermost MARK can be taken.
        assert!(parse(b"\x80\x02]K\x01(a.").is_err());
    }
}
