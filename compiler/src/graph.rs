//! Lazy tensors: ordinary tensor code records nodes into a [`Graph`]; [`Graph::realize`]
//! compiles the part the requested outputs need (or fetches the cached plan) and runs it.
//! In eager mode every op is realized as it is recorded (a graph of one op).

use crate::{plan, Error, Options, Result};
use nextflow_ops::msrq::Codebook;
use nextflow_ops::sampling::SamplerConfig;
use nextflow_ops::{rules, Activation, AttentionOptions, BinaryOp, Conv2d, ReduceOp, Resize, Rope, UnaryOp};
use nextflow_runtime::{broadcast_shape, DType, Device, Layout, Tensor};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

pub type NodeId = usize;

/// A per-run host value of a graph (a seed, a write offset): [`Graph::param`]. Plans are
/// keyed by which param an op reads, never by its value, so a step with a new seed or at a
/// later cache position replays the same plan.
pub type ParamId = usize;

/// Movement ops: new views of the same buffer, never a kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewOp {
    Reshape(Vec<usize>),
    Permute(Vec<usize>),
    Narrow { dim: usize, start: usize, len: usize },
    BroadcastTo(Vec<usize>),
    Unsqueeze(usize),
}

impl ViewOp {
    fn apply_layout(&self, l: &Layout) -> nextflow_runtime::Result<Layout> {
        match self {
            ViewOp::Reshape(s) => l.reshape(s),
            ViewOp::Permute(d) => l.permute(d),
            ViewOp::Narrow { dim, start, len } => l.narrow(*dim, *start, *len),
            ViewOp::BroadcastTo(s) => l.broadcast_to(s),
            ViewOp::Unsqueeze(d) => {
                let mut s = l.shape().to_vec();
                if *d > s.len() {
                    return Err(nextflow_runtime::Error::DimOutOfRange { op: "unsqueeze", dim: *d, rank: s.len() });
                }
                s.insert(*d, 1);
                Ok(Layout::contiguous(&s))
            }
        }
    }

    pub(crate) fn apply(&self, t: &Tensor) -> nextflow_runtime::Result<Tensor> {
        match self {
            ViewOp::Reshape(s) => t.reshape(s),
            ViewOp::Permute(d) => t.permute(d),
            ViewOp::Narrow { dim, start, len } => t.narrow(*dim, *start, *len),
            ViewOp::BroadcastTo(s) => t.broadcast_to(s),
            ViewOp::Unsqueeze(d) => t.unsqueeze(*d),
        }
    }
}

/// What a node computes. Inputs are listed in [`Node::inputs`].
#[derive(Clone, Debug)]
pub enum Op {
    /// Graph input `i` (a bound tensor or a shape-only placeholder).
    Input(usize),
    /// A scalar (shape `[]`) that broadcasts; inlined into fused kernels.
    Const(f32),
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// `silu(gate) · up`.
    Swiglu,
    Cast(DType),
    View(ViewOp),
    /// `[a, b, bias?, residual?]`; the compiler folds bias, activation and residual adds in.
    Matmul { bias: bool, activation: Activation, residual: bool },
    /// `[x, weight]`.
    RmsNorm { eps: f32 },
    /// `[x, residual, weight]`: this node is the normed output; the sum is a
    /// [`Op::SecondOutput`] node (made by fusion only).
    AddRmsNorm { eps: f32 },
    /// The second output of the node in `inputs[0]`.
    SecondOutput,
    Reduce(ReduceOp),
    Softmax,
    /// `[q, k, v]`.
    Attention(AttentionOptions),
    /// `[x, positions]`.
    Rope(Arc<Rope>),
    /// Joins the inputs along a dim.
    Concat(usize),
    /// `[table, ids]`.
    Embedding,
    /// `[ids, block 0, block 1, ..]`: rows of a table stored as row blocks (each within one
    /// GPU binding), gathered by ids.
    BlockedEmbedding,
    /// `[x [n, c, h, w]]` resized to `h × w`.
    Interpolate { h: usize, w: usize, mode: Resize },
    /// `[x, weight, bias?, residual?]`, nearest ×2 upsampling of `x` first when `upsample2x`.
    Conv2d { geometry: Conv2d, bias: bool, residual: bool, upsample2x: bool },
    /// `[x, gamma, beta]`, optionally followed by SiLU.
    GroupNorm { groups: usize, eps: f32, silu: bool },
    /// `[q, k, v]` maps `[n, c, h, w]`: single-head attention over the positions.
    SpatialAttention,
    /// Index (u32) of the largest value along the last dim.
    Argmax,
    /// `[logits, uncond?]` → one id (u32) per row, drawn under the seed in param `seed` at
    /// sampling step param `step` ([`nextflow_ops::sampling::sample`]).
    Sample { config: SamplerConfig, seed: ParamId, step: ParamId },
    /// `[dst, src]`: writes `src` into `dst` along `dim` from the offset in param `start`,
    /// in place; the node is `dst` afterwards (a KV cache append). `dst` must be an input
    /// the graph owns ([`Graph::input_owned`]) and that nothing else reads.
    Store { dim: usize, start: ParamId },
    /// `[z [rows, dim]]` → the nearest code (u32) of every row.
    NearestCodes(Arc<Codebook>),
}

impl Op {
    /// Elementwise float ops that fuse into one kernel.
    pub(crate) fn is_elementwise(&self) -> bool {
        matches!(self, Op::Unary(_) | Op::Binary(_) | Op::Swiglu)
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

pub(crate) struct GraphData {
    pub nodes: Vec<Node>,
    /// Bound tensors of the `Input` nodes (`None`: a placeholder, compile-only).
    pub inputs: Vec<Option<Tensor>>,
    /// Inputs whose size along one dim changes from step to step: `(input, dim)`.
    pub dynamic: Vec<(usize, usize)>,
    /// Per-run host values ([`ParamId`]).
    pub params: Vec<u64>,
    pub device: Device,
    pub options: Options,
    pub eager: bool,
}

/// A graph being recorded. Cheap to clone (shared).
#[derive(Clone)]
pub struct Graph(pub(crate) Rc<RefCell<GraphData>>);

/// A lazy tensor: a node of a graph. Methods record ops and return new lazy tensors.
#[derive(Clone)]
pub struct Lazy {
    graph: Graph,
    id: NodeId,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lazy(#{}, {:?}, {})", self.id, self.shape, self.dtype)
    }
}

fn shape_err(op: &'static str, msg: String) -> Error {
    Error::Runtime(nextflow_runtime::Error::Shape { op, msg })
}

impl Graph {
    /// A lazy graph with options from the environment ([`Options::from_env`]).
    pub fn new(device: &Device) -> Graph {
        Graph::with_options(device, Options::from_env())
    }

    pub fn with_options(device: &Device, options: Options) -> Graph {
        Graph(Rc::new(RefCell::new(GraphData { nodes: Vec::new(), inputs: Vec::new(), dynamic: Vec::new(), params: Vec::new(), device: device.clone(), options, eager: false })))
    }

    /// Eager mode: each op runs as it is recorded (one-op graphs, through the same plan
    /// cache and counters), as a reference and for debugging.
    pub fn eager(device: &Device) -> Graph {
        let g = Graph::new(device);
        g.0.borrow_mut().eager = true;
        g
    }

    pub fn device(&self) -> Device {
        self.0.borrow().device.clone()
    }

    pub fn options(&self) -> Options {
        self.0.borrow().options.clone()
    }

    pub fn is_eager(&self) -> bool {
        self.0.borrow().eager
    }

    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A tensor that the graph reads (any view; it must live on the graph's device).
    pub fn input(&self, t: &Tensor) -> Result<Lazy> {
        let device = self.device();
        if !t.device().same(&device) {
            return Err(Error::Runtime(nextflow_runtime::Error::DeviceMismatch {
                op: "graph input",
                lhs: device.info().spec(),
                rhs: t.device().info().spec(),
            }));
        }
        Ok(self.add_input(Some(t.clone()), t.shape(), t.dtype()))
    }

    /// An input whose size along `dim` changes from step to step, as the keys or values of a
    /// growing KV cache do: the plan is keyed without that size, so every step replays it.
    /// Only attention may read such an input (as its keys or values); compiling checks it.
    pub fn input_dynamic(&self, t: &Tensor, dim: usize) -> Result<Lazy> {
        if dim >= t.rank() {
            return Err(Error::Runtime(nextflow_runtime::Error::DimOutOfRange { op: "input_dynamic", dim, rank: t.rank() }));
        }
        let lazy = self.input(t)?;
        let mut g = self.0.borrow_mut();
        let index = g.inputs.len() - 1;
        g.dynamic.push((index, dim));
        Ok(lazy)
    }

    /// An input the graph takes over, for a [`Lazy::store`] to write in place: the tensor must
    /// be the only handle to its buffer (no clone or view of it alive).
    pub fn input_owned(&self, t: Tensor) -> Result<Lazy> {
        let lazy = self.input(&t)?;
        drop(t);
        Ok(lazy)
    }

    /// A per-run host value (see [`ParamId`]).
    pub fn param(&self, value: u64) -> ParamId {
        let mut g = self.0.borrow_mut();
        g.params.push(value);
        g.params.len() - 1
    }

    /// A shape-only input: the graph can be compiled (plans, counts, memory) but not run.
    pub fn placeholder(&self, shape: &[usize], dtype: DType) -> Lazy {
        self.add_input(None, shape, dtype)
    }

    fn add_input(&self, t: Option<Tensor>, shape: &[usize], dtype: DType) -> Lazy {
        let mut g = self.0.borrow_mut();
        let index = g.inputs.len();
        g.inputs.push(t);
        g.nodes.push(Node { op: Op::Input(index), inputs: vec![], shape: shape.to_vec(), dtype });
        Lazy { graph: self.clone(), id: g.nodes.len() - 1, shape: shape.to_vec(), dtype }
    }

    /// A scalar constant of `dtype` (shape `[]`, broadcasts).
    pub fn constant(&self, value: f32, dtype: DType) -> Result<Lazy> {
        self.push(Op::Const(value), vec![], vec![], dtype)
    }

    fn push(&self, op: Op, inputs: Vec<NodeId>, shape: Vec<usize>, dtype: DType) -> Result<Lazy> {
        let id = {
            let mut g = self.0.borrow_mut();
            g.nodes.push(Node { op, inputs, shape: shape.clone(), dtype });
            g.nodes.len() - 1
        };
        let lazy = Lazy { graph: self.clone(), id, shape, dtype };
        if self.is_eager() && !matches!(self.0.borrow().nodes[id].op, Op::Const(_)) {
            // Realize this one op now, as a graph of one op (so its plan is cached by the
            // op's own signature), and record the result as an input.
            let t = self.realize_one(id)?;
            let mut g = self.0.borrow_mut();
            let index = g.inputs.len();
            g.inputs.push(Some(t));
            g.nodes[id] = Node { op: Op::Input(index), inputs: vec![], shape: lazy.shape.clone(), dtype };
        }
        Ok(lazy)
    }

    /// Runs node `id` alone: its inputs (realized or constant) become a one-op graph.
    fn realize_one(&self, id: NodeId) -> Result<Tensor> {
        // A store's destination moves into the one-op graph (it is written in place).
        let is_store = matches!(self.0.borrow().nodes[id].op, Op::Store { .. });
        let owned = RefCell::new(if is_store { self.take_store_destinations(&[id]) } else { Vec::new() });
        let g = self.0.borrow();
        let node = &g.nodes[id];
        let mut one = GraphData { nodes: Vec::new(), inputs: Vec::new(), dynamic: Vec::new(), params: g.params.clone(), device: g.device.clone(), options: g.options.clone(), eager: false };
        let mut inputs = Vec::new();
        let store = matches!(node.op, Op::Store { .. });
        for (j, &u) in node.inputs.iter().enumerate() {
            let n = &g.nodes[u];
            let op = match n.op {
                Op::Input(k) => {
                    // A store writes its destination in place: the one-op graph takes it.
                    one.inputs.push(if store && j == 0 { owned.borrow_mut()[k].take() } else { g.inputs[k].clone() });
                    Op::Input(one.inputs.len() - 1)
                }
                Op::Const(c) => Op::Const(c),
                _ => unreachable!("eager graphs hold only inputs and constants"),
            };
            one.nodes.push(Node { op, inputs: vec![], shape: n.shape.clone(), dtype: n.dtype });
            inputs.push(one.nodes.len() - 1);
        }
        one.nodes.push(Node { op: node.op.clone(), inputs, shape: node.shape.clone(), dtype: node.dtype });
        let out = one.nodes.len() - 1;
        let plan = plan::compile_cached(&one, &[out])?;
        let inputs = std::mem::take(&mut one.inputs);
        Ok(plan.run(inputs, &one.params)?.remove(0))
    }

    /// The graph's inputs with the destinations of the stores among `nodes` moved out (so
    /// each is the only handle to its buffer); the others are cloned.
    fn take_store_destinations(&self, nodes: &[NodeId]) -> Vec<Option<Tensor>> {
        let mut g = self.0.borrow_mut();
        let mut inputs = g.inputs.clone();
        let dsts: Vec<usize> = nodes
            .iter()
            .filter(|&&v| matches!(g.nodes[v].op, Op::Store { .. }))
            .filter_map(|&v| if let Op::Input(k) = g.nodes[g.nodes[v].inputs[0]].op { Some(k) } else { None })
            .collect();
        for k in dsts {
            inputs[k] = g.inputs[k].take();
        }
        inputs
    }

    /// Compiles (or fetches from the plan cache) the plan that computes `outputs`.
    pub fn compile(&self, outputs: &[&Lazy]) -> Result<Rc<plan::Plan>> {
        let ids = self.output_ids(outputs)?;
        let g = self.0.borrow();
        plan::compile_cached(&g, &ids)
    }

    /// Computes `outputs`: compiles the graph once per signature, then replays the plan.
    /// A graph with stores gives up the buffers they write: realize it once.
    pub fn realize(&self, outputs: &[&Lazy]) -> Result<Vec<Tensor>> {
        let plan = self.compile(outputs)?;
        let stores: Vec<NodeId> = (0..self.len()).collect();
        let inputs = self.take_store_destinations(&stores);
        let params = self.0.borrow().params.clone();
        plan.run(inputs, &params)
    }

    fn output_ids(&self, outputs: &[&Lazy]) -> Result<Vec<NodeId>> {
        outputs
            .iter()
            .map(|l| if Rc::ptr_eq(&l.graph.0, &self.0) { Ok(l.id) } else { Err(Error::Graph("a lazy tensor of another graph was passed to realize".into())) })
            .collect()
    }

    /// The plan-cache key: device, options, outputs, every node (op and its parameters,
    /// inputs, shape, dtype) and the layout of every bound input, written as a word stream
    /// (exact: equal keys are equal graphs). A dynamic input dim is written as `?`
    /// (`u64::MAX`), so a step over a longer KV cache finds the same plan. Words, not
    /// formatted text: the key is built for every realize (a cached decode step's whole
    /// overhead), and formatting it took ~15 µs per layer graph.
    pub(crate) fn signature(g: &GraphData, outputs: &[NodeId]) -> Vec<u64> {
        let mut k = Key(Vec::with_capacity(12 * g.nodes.len() + 32));
        k.text(&g.device.info().spec());
        k.text(&g.device.info().name);
        k.word(g.options.key() as u64);
        k.list(outputs);
        let dynamic = |input: usize| g.dynamic.iter().find(|(i, _)| *i == input).map(|(_, d)| *d);
        let shape = |k: &mut Key, input: Option<usize>, shape: &[usize]| {
            let d = input.and_then(dynamic);
            k.word(shape.len() as u64);
            k.0.extend(shape.iter().enumerate().map(|(i, &n)| if Some(i) == d { u64::MAX } else { n as u64 }));
        };
        for n in &g.nodes {
            k.op(&n.op);
            k.list(&n.inputs);
            shape(&mut k, if let Op::Input(i) = n.op { Some(i) } else { None }, &n.shape);
            k.word(n.dtype as u64);
        }
        for (i, t) in g.inputs.iter().enumerate() {
            match t {
                Some(t) => {
                    shape(&mut k, Some(i), t.shape());
                    k.list(t.strides());
                    k.word(t.is_dense() as u64);
                }
                None => k.word(u64::MAX - 1),
            }
        }
        k.0
    }
}

/// A word stream (see [`Graph::signature`]).
struct Key(Vec<u64>);

impl Key {
    fn word(&mut self, w: u64) {
        self.0.push(w);
    }
    fn list(&mut self, v: &[usize]) {
        self.word(v.len() as u64);
        self.0.extend(v.iter().map(|&x| x as u64));
    }
    fn text(&mut self, t: &str) {
        self.word(t.len() as u64);
        self.0.extend(t.as_bytes().chunks(8).map(|c| c.iter().fold(0u64, |w, &b| w << 8 | b as u64)));
    }
    fn f32(&mut self, x: f32) {
        self.word(x.to_bits() as u64);
    }
    fn opt_list(&mut self, v: &Option<Vec<usize>>) {
        match v {
            Some(v) => self.list(v),
            None => self.word(u64::MAX),
        }
    }
    /// The op's variant (a tag per variant), then its parameters.
    fn op(&mut self, op: &Op) {
        match op {
            Op::Input(i) => self.0.extend([0, *i as u64]),
            Op::Const(c) => {
                self.word(1);
                self.f32(*c);
            }
            Op::Unary(u) => self.0.extend([2, *u as u64]),
            Op::Binary(b) => self.0.extend([3, *b as u64]),
            Op::Swiglu => self.word(4),
            Op::Cast(d) => self.0.extend([5, *d as u64]),
            Op::View(v) => {
                self.word(6);
                match v {
                    ViewOp::Reshape(s) => {
                        self.word(0);
                        self.list(s);
                    }
                    ViewOp::Permute(d) => {
                        self.word(1);
                        self.list(d);
                    }
                    ViewOp::Narrow { dim, start, len } => self.0.extend([2, *dim as u64, *start as u64, *len as u64]),
                    ViewOp::BroadcastTo(s) => {
                        self.word(3);
                        self.list(s);
                    }
                    ViewOp::Unsqueeze(d) => self.0.extend([4, *d as u64]),
                }
            }
            Op::Matmul { bias, activation, residual } => self.0.extend([7, *bias as u64, *activation as u64, *residual as u64]),
            Op::RmsNorm { eps } => {
                self.word(8);
                self.f32(*eps);
            }
            Op::AddRmsNorm { eps } => {
                self.word(9);
                self.f32(*eps);
            }
            Op::SecondOutput => self.word(10),
            Op::Reduce(r) => self.0.extend([11, *r as u64]),
            Op::Softmax => self.word(12),
            Op::Attention(o) => {
                self.word(13);
                match &o.mask {
                    None => self.word(0),
                    Some(nextflow_ops::Mask::None) => self.word(1),
                    Some(nextflow_ops::Mask::Causal) => self.word(2),
                    Some(nextflow_ops::Mask::Segments(s)) => {
                        self.word(3);
                        self.list(s);
                    }
                }
                self.opt_list(&o.kv_lens);
                self.opt_list(&o.kv_starts);
                match o.scale {
                    Some(x) => self.f32(x),
                    None => self.word(u64::MAX),
                }
            }
            // The table's identity: cached plans hold the Arc, so the address stays unique.
            Op::Rope(r) => self.0.extend([14, Arc::as_ptr(r) as usize as u64]),
            Op::Concat(d) => self.0.extend([15, *d as u64]),
            Op::Embedding => self.word(16),
            Op::BlockedEmbedding => self.word(25),
            Op::Interpolate { h, w, mode } => self.0.extend([17, *h as u64, *w as u64, *mode as u64]),
            Op::Conv2d { geometry, bias, residual, upsample2x } => {
                self.0.extend([18, geometry.stride as u64, *bias as u64, *residual as u64, *upsample2x as u64]);
                self.0.extend(geometry.pad.iter().map(|&p| p as u64));
            }
            Op::GroupNorm { groups, eps, silu } => {
                self.0.extend([19, *groups as u64, *silu as u64]);
                self.f32(*eps);
            }
            Op::SpatialAttention => self.word(20),
            Op::Argmax => self.word(21),
            Op::Sample { config, seed, step } => {
                self.0.extend([22, *seed as u64, *step as u64, config.top_k as u64]);
                for x in [config.cfg_scale, config.temperature, config.top_p] {
                    self.f32(x);
                }
                match config.id_range {
                    Some((a, b)) => self.0.extend([a as u64, b as u64]),
                    None => self.word(u64::MAX),
                }
            }
            Op::Store { dim, start } => self.0.extend([23, *dim as u64, *start as u64]),
            // The codebook's identity, as for RoPE tables.
            Op::NearestCodes(c) => self.0.extend([24, Arc::as_ptr(c) as usize as u64]),
        }
    }
}

impl Lazy {
    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Realizes this tensor alone.
    pub fn realize(&self) -> Result<Tensor> {
        Ok(self.graph.realize(&[self])?.remove(0))
    }

    fn same_graph(&self, other: &Lazy) -> Result<()> {
        if Rc::ptr_eq(&self.graph.0, &other.graph.0) {
            Ok(())
        } else {
            Err(Error::Graph("lazy tensors of different graphs were combined".into()))
        }
    }

    fn check_same_dtype(&self, op: &'static str, other: &Lazy) -> Result<()> {
        self.same_graph(other)?;
        if self.dtype != other.dtype {
            return Err(Error::Runtime(nextflow_runtime::Error::DTypeMismatch { op, expected: self.dtype, found: other.dtype }));
        }
        Ok(())
    }

    fn check_float(&self, op: &'static str) -> Result<()> {
        if !self.dtype.is_float() {
            return Err(Error::Runtime(nextflow_runtime::Error::Unsupported { op, dtype: self.dtype, device: self.graph.device().info().spec() }));
        }
        Ok(())
    }

    pub fn unary(&self, op: UnaryOp) -> Result<Lazy> {
        self.check_float("unary")?;
        self.graph.push(Op::Unary(op), vec![self.id], self.shape.clone(), self.dtype)
    }
    pub fn neg(&self) -> Result<Lazy> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Lazy> {
        self.unary(UnaryOp::Exp)
    }
    pub fn sqrt(&self) -> Result<Lazy> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Lazy> {
        self.unary(UnaryOp::Rsqrt)
    }
    pub fn tanh(&self) -> Result<Lazy> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn silu(&self) -> Result<Lazy> {
        self.unary(UnaryOp::Silu)
    }
    pub fn gelu(&self) -> Result<Lazy> {
        self.unary(UnaryOp::GeluErf)
    }

    /// `op(self, other)` with numpy broadcasting.
    pub fn binary(&self, other: &Lazy, op: BinaryOp) -> Result<Lazy> {
        self.check_same_dtype("binary", other)?;
        let shape = broadcast_shape("binary", &self.shape, &other.shape)?;
        self.graph.push(Op::Binary(op), vec![self.id, other.id], shape, self.dtype)
    }
    pub fn add(&self, other: &Lazy) -> Result<Lazy> {
        self.binary(other, BinaryOp::Add)
    }
    pub fn sub(&self, other: &Lazy) -> Result<Lazy> {
        self.binary(other, BinaryOp::Sub)
    }
    pub fn mul(&self, other: &Lazy) -> Result<Lazy> {
        self.binary(other, BinaryOp::Mul)
    }
    pub fn div(&self, other: &Lazy) -> Result<Lazy> {
        self.binary(other, BinaryOp::Div)
    }
    pub fn maximum(&self, other: &Lazy) -> Result<Lazy> {
        self.binary(other, BinaryOp::Max)
    }
    /// `self · value`.
    pub fn scale(&self, value: f32) -> Result<Lazy> {
        self.mul(&self.graph.constant(value, self.dtype)?)
    }
    /// `self + value`.
    pub fn add_scalar(&self, value: f32) -> Result<Lazy> {
        self.add(&self.graph.constant(value, self.dtype)?)
    }

    /// `silu(self) · up`.
    pub fn swiglu(&self, up: &Lazy) -> Result<Lazy> {
        self.check_float("swiglu")?;
        self.check_same_dtype("swiglu", up)?;
        let shape = broadcast_shape("swiglu", &self.shape, &up.shape)?;
        self.graph.push(Op::Swiglu, vec![self.id, up.id], shape, self.dtype)
    }

    pub fn cast(&self, dtype: DType) -> Result<Lazy> {
        self.graph.push(Op::Cast(dtype), vec![self.id], self.shape.clone(), dtype)
    }

    fn view(&self, v: ViewOp) -> Result<Lazy> {
        let layout = v.apply_layout(&Layout::contiguous(&self.shape))?;
        self.graph.push(Op::View(v), vec![self.id], layout.shape().to_vec(), self.dtype)
    }
    pub fn reshape(&self, shape: &[usize]) -> Result<Lazy> {
        self.view(ViewOp::Reshape(shape.to_vec()))
    }
    pub fn permute(&self, dims: &[usize]) -> Result<Lazy> {
        self.view(ViewOp::Permute(dims.to_vec()))
    }
    pub fn transpose(&self, a: usize, b: usize) -> Result<Lazy> {
        if a >= self.rank() || b >= self.rank() {
            return Err(Error::Runtime(nextflow_runtime::Error::DimOutOfRange { op: "transpose", dim: a.max(b), rank: self.rank() }));
        }
        let mut dims: Vec<usize> = (0..self.rank()).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Lazy> {
        self.view(ViewOp::Narrow { dim, start, len })
    }
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Lazy> {
        self.view(ViewOp::BroadcastTo(shape.to_vec()))
    }
    pub fn unsqueeze(&self, dim: usize) -> Result<Lazy> {
        self.view(ViewOp::Unsqueeze(dim))
    }

    /// `self · b` (`b` 2-D or with the same batch dims).
    pub fn matmul(&self, b: &Lazy) -> Result<Lazy> {
        self.check_float("matmul")?;
        self.check_same_dtype("matmul", b)?;
        let shape = rules::matmul(&self.shape, &b.shape)?;
        self.graph.push(Op::Matmul { bias: false, activation: Activation::None, residual: false }, vec![self.id, b.id], shape, self.dtype)
    }

    /// `self · weightᵀ (+ bias)` for an HF `[out, in]` weight: a matmul and an add, which
    /// the compiler fuses.
    pub fn linear(&self, weight: &Lazy, bias: Option<&Lazy>) -> Result<Lazy> {
        let y = self.matmul(&weight.transpose(0, 1)?)?;
        match bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    pub fn rms_norm(&self, weight: &Lazy, eps: f32) -> Result<Lazy> {
        self.check_float("rms_norm")?;
        self.check_same_dtype("rms_norm", weight)?;
        rules::rms_norm("rms_norm", &self.shape, &weight.shape, eps)?;
        self.graph.push(Op::RmsNorm { eps }, vec![self.id, weight.id], self.shape.clone(), self.dtype)
    }

    pub fn reduce(&self, op: ReduceOp) -> Result<Lazy> {
        self.check_float("reduce")?;
        if self.shape.last().copied().unwrap_or(0) == 0 {
            return Err(shape_err("reduce", format!("cannot reduce the last dim of {:?}", self.shape)));
        }
        self.graph.push(Op::Reduce(op), vec![self.id], self.shape[..self.rank() - 1].to_vec(), self.dtype)
    }
    pub fn sum(&self) -> Result<Lazy> {
        self.reduce(ReduceOp::Sum)
    }
    pub fn mean(&self) -> Result<Lazy> {
        self.reduce(ReduceOp::Mean)
    }

    pub fn softmax(&self) -> Result<Lazy> {
        self.check_float("softmax")?;
        self.graph.push(Op::Softmax, vec![self.id], self.shape.clone(), self.dtype)
    }

    /// Fused attention (see [`nextflow_ops::attention`]); `self` is q.
    pub fn attention(&self, k: &Lazy, v: &Lazy, options: &AttentionOptions) -> Result<Lazy> {
        self.check_same_dtype("attention", k)?;
        self.check_same_dtype("attention", v)?;
        if self.rank() != 4 || k.rank() != 4 || k.shape != v.shape {
            return Err(shape_err("attention", format!("q {:?}, k {:?}, v {:?}", self.shape, k.shape, v.shape)));
        }
        self.graph.push(Op::Attention(options.clone()), vec![self.id, k.id, v.id], self.shape.clone(), self.dtype)
    }

    /// Rotary embedding of `self [b, heads, seq, head_dim]` at `positions`.
    pub fn rope(&self, rope: &Arc<Rope>, positions: &Lazy) -> Result<Lazy> {
        self.same_graph(positions)?;
        if self.rank() != 4 || self.shape[3] != rope.head_dim {
            return Err(shape_err("rope", format!("x must be [b, heads, seq, {}], got {:?}", rope.head_dim, self.shape)));
        }
        self.graph.push(Op::Rope(rope.clone()), vec![self.id, positions.id], self.shape.clone(), self.dtype)
    }

    pub fn concat(parts: &[&Lazy], dim: usize) -> Result<Lazy> {
        let first = parts.first().ok_or_else(|| Error::Graph("concat needs at least one tensor".into()))?;
        for p in parts {
            first.check_same_dtype("concat", p)?;
        }
        let shape = rules::concat(&parts.iter().map(|p| p.shape.as_slice()).collect::<Vec<_>>(), dim)?;
        first.graph.push(Op::Concat(dim), parts.iter().map(|p| p.id).collect(), shape, first.dtype)
    }

    /// `self [n, c, h, w]` resized to `h × w` ([`nextflow_ops::interpolate`]).
    pub fn interpolate(&self, h: usize, w: usize, mode: Resize) -> Result<Lazy> {
        self.check_float("interpolate")?;
        let shape = rules::interpolate(&self.shape, h, w)?;
        self.graph.push(Op::Interpolate { h, w, mode }, vec![self.id], shape.to_vec(), self.dtype)
    }

    /// Convolution of `self [n, cin, h, w]` (nearest ×2 first when `upsample2x`) by
    /// `weight [cout, cin, kh, kw]`, plus `bias [cout]` and `residual` (fused).
    pub fn conv2d(&self, weight: &Lazy, bias: Option<&Lazy>, geometry: Conv2d, upsample2x: bool, residual: Option<&Lazy>) -> Result<Lazy> {
        self.check_float("conv2d")?;
        for t in std::iter::once(weight).chain(bias).chain(residual) {
            self.check_same_dtype("conv2d", t)?;
        }
        let shape = rules::conv2d(&self.shape, &weight.shape, bias.map(|b| b.shape()), residual.map(|r| r.shape()), geometry, upsample2x)?;
        let inputs = [self, weight].into_iter().chain(bias).chain(residual).map(|t| t.id).collect();
        self.graph.push(Op::Conv2d { geometry, bias: bias.is_some(), residual: residual.is_some(), upsample2x }, inputs, shape.to_vec(), self.dtype)
    }

    /// GroupNorm of `self [n, c, ..]` (f32 statistics), then SiLU when `silu`.
    pub fn group_norm(&self, groups: usize, gamma: &Lazy, beta: &Lazy, eps: f32, silu: bool) -> Result<Lazy> {
        self.check_float("group_norm")?;
        self.check_same_dtype("group_norm", gamma)?;
        self.check_same_dtype("group_norm", beta)?;
        rules::group_norm(&self.shape, groups, &gamma.shape, &beta.shape)?;
        self.graph.push(Op::GroupNorm { groups, eps, silu }, vec![self.id, gamma.id, beta.id], self.shape.clone(), self.dtype)
    }

    /// Single-head attention over the positions of maps `[n, c, h, w]`; `self` is q.
    pub fn spatial_attention(&self, k: &Lazy, v: &Lazy) -> Result<Lazy> {
        self.check_same_dtype("spatial_attention", k)?;
        self.check_same_dtype("spatial_attention", v)?;
        rules::spatial_attention(&self.shape, &k.shape, &v.shape)?;
        self.graph.push(Op::SpatialAttention, vec![self.id, k.id, v.id], self.shape.clone(), self.dtype)
    }

    /// Index (u32) of the largest value of every row (the first, on ties).
    pub fn argmax(&self) -> Result<Lazy> {
        self.check_float("argmax")?;
        rules::rows("argmax", &self.shape)?;
        let shape = self.shape[..self.rank() - 1].to_vec();
        self.graph.push(Op::Argmax, vec![self.id], shape, DType::U32)
    }

    /// One id (u32) per row of logits `self [.., vocab]`, under CFG against `uncond` when
    /// given; draws with the seed and sampling step of params `seed` and `step`.
    pub fn sample(&self, uncond: Option<&Lazy>, config: &SamplerConfig, seed: ParamId, step: ParamId) -> Result<Lazy> {
        self.check_float("sample")?;
        rules::rows("sample", &self.shape)?;
        let shape = self.shape[..self.rank() - 1].to_vec();
        if let Some(u) = uncond {
            self.check_same_dtype("sample", u)?;
            if u.shape != self.shape {
                return Err(shape_err("sample", format!("uncond logits {:?} must match the cond logits {:?}", u.shape, self.shape)));
            }
        }
        let params = self.graph.0.borrow().params.len();
        if seed >= params || step >= params {
            return Err(Error::Graph(format!("sample reads params {seed} and {step}; the graph has {params}")));
        }
        let inputs = std::iter::once(self).chain(uncond).map(|t| t.id).collect();
        self.graph.push(Op::Sample { config: *config, seed, step }, inputs, shape, DType::U32)
    }

    /// `self` (an owned input) with `src` written into it along `dim` from the offset in
    /// param `start`, in place.
    pub fn store(&self, src: &Lazy, dim: usize, start: ParamId) -> Result<Lazy> {
        self.check_same_dtype("store", src)?;
        let at = *self.graph.0.borrow().params.get(start).ok_or_else(|| Error::Graph(format!("store reads param {start}, which the graph lacks")))?;
        rules::store(&self.shape, &src.shape, dim, at as usize)?;
        if !matches!(self.graph.0.borrow().nodes[self.id].op, Op::Input(_)) {
            return Err(Error::Graph("store writes into a graph input (Graph::input_owned)".into()));
        }
        self.graph.push(Op::Store { dim, start }, vec![self.id, src.id], self.shape.clone(), self.dtype)
    }

    /// The nearest code (u32) of every row of `self [rows, dim]` in `codebook`.
    pub fn nearest_codes(&self, codebook: &Arc<Codebook>) -> Result<Lazy> {
        self.check_float("nearest_codes")?;
        if self.rank() != 2 || self.shape[1] != codebook.dim() || self.dtype != codebook.table().dtype() {
            return Err(shape_err("nearest_codes", format!("z must be [rows, {}] {}, got {:?} {}", codebook.dim(), codebook.table().dtype(), self.shape, self.dtype)));
        }
        self.graph.push(Op::NearestCodes(codebook.clone()), vec![self.id], vec![self.shape[0]], DType::U32)
    }

    /// Rows of the table stored as row blocks `weight` gathered by ids `self`.
    pub fn blocked_embedding(&self, weight: &nextflow_ops::Weight) -> Result<Lazy> {
        let mut inputs = vec![self.id];
        for b in weight.blocks() {
            inputs.push(self.graph.input(b)?.id);
        }
        let mut shape = self.shape.clone();
        shape.push(weight.cols());
        self.graph.push(Op::BlockedEmbedding, inputs, shape, weight.dtype())
    }

    /// Rows of `self [vocab, dim]` gathered by `ids`.
    pub fn embedding(&self, ids: &Lazy) -> Result<Lazy> {
        self.same_graph(ids)?;
        if self.rank() != 2 {
            return Err(shape_err("embedding", format!("table must be [vocab, dim], got {:?}", self.shape)));
        }
        let mut shape = ids.shape.clone();
        shape.push(self.shape[1]);
        self.graph.push(Op::Embedding, vec![self.id, ids.id], shape, self.dtype)
    }
}
