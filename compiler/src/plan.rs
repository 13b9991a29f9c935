//! Compiling a graph into a plan: fusion rewrites (norm patterns, matmul epilogues,
//! add + RMSNorm), scheduling with elementwise grouping, liveness, buffer reuse and in-place
//! writes, and the static cost (launches, bytes, FLOPs) of every step. Plans are cached by
//! graph signature and replayed.

use crate::counters::{self, Cost};
use crate::graph::{Graph, GraphData, Node, NodeId, Op, ViewOp};
use crate::autotune::NormKind;
use crate::{autotune, Error, Result};
use nextflow_ops::fused::{fused_elementwise, FusedInstr, FusedProgram};
use nextflow_ops::matmul::matmul_with;
use nextflow_ops::{Activation, BinaryOp, Epilogue, ReduceOp, UnaryOp};
use nextflow_runtime::{DType, Device, Tensor};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

/// One kernel launch (or a free view) of a plan.
#[derive(Clone, Debug)]
pub enum StepKind {
    /// Runs the node's op through `nextflow-ops` (views cost nothing).
    Node(NodeId),
    /// One fused elementwise kernel over `shape`; `in_place[k]` names the read whose
    /// (dead) buffer output `k` overwrites.
    Fused { program: FusedProgram, shape: Vec<usize>, out_dtype: DType, in_place: Vec<Option<usize>> },
}

#[derive(Clone, Debug)]
pub struct Step {
    pub kind: StepKind,
    /// Values the step reads (for fused steps: its inputs, in load order).
    pub reads: Vec<NodeId>,
    /// Values the step defines.
    pub writes: Vec<NodeId>,
    pub cost: Cost,
}

/// What a plan costs per run and how much memory it needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub nodes: usize,
    pub steps: usize,
    pub launches: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub flops: u64,
    /// Elementwise kernels made of more than one op, and the ops they hold.
    pub fused_kernels: usize,
    pub fused_ops: usize,
    /// Matmuls with a bias, activation or residual folded in.
    pub matmul_epilogues: usize,
    pub in_place: usize,
    /// Peak bytes of intermediate and output buffers alive at once (inputs excluded).
    pub peak_bytes: u64,
    /// Bytes every intermediate would take if none were freed or reused.
    pub total_alloc_bytes: u64,
    /// Distinct buffers after reuse (greedy, same-size slots).
    pub buffers: usize,
}

impl fmt::Display for PlanStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} launches ({} steps from {} nodes; {} fused kernels holding {} ops, {} matmul epilogues), {:.3} MB read, {:.3} MB written, {:.3} GFLOP, peak {:.3} MB in {} buffers ({:.3} MB without reuse, {} in place)",
            self.launches,
            self.steps,
            self.nodes,
            self.fused_kernels,
            self.fused_ops,
            self.matmul_epilogues,
            self.bytes_read as f64 / 1e6,
            self.bytes_written as f64 / 1e6,
            self.flops as f64 / 1e9,
            self.peak_bytes as f64 / 1e6,
            self.buffers,
            self.total_alloc_bytes as f64 / 1e6,
            self.in_place,
        )
    }
}

/// A compiled graph: steps in order, values to drop after each, and constants uploaded once.
pub struct Plan {
    nodes: Vec<Node>,
    steps: Vec<Step>,
    outputs: Vec<NodeId>,
    /// Values dropped after each step (their buffers return to the device's pool).
    free_after: Vec<Vec<NodeId>>,
    consts: HashMap<NodeId, Tensor>,
    inputs: Vec<(NodeId, usize)>,
    /// Matmuls that write their columns straight into a concat's output: node → (concat,
    /// first column). Their concat costs nothing and runs nothing.
    into: HashMap<NodeId, (NodeId, usize)>,
    /// The concats those matmuls write.
    assembled: HashSet<NodeId>,
    device: Device,
    autotune: bool,
    pub stats: PlanStats,
    /// The buffers of its intermediates, kept between runs (a replay allocates only its
    /// outputs).
    arena: RefCell<nextflow_runtime::Arena>,
}

/// Plans kept per thread before the cache starts over.
const MAX_PLANS: usize = 1024;

thread_local! {
    static PLANS: RefCell<HashMap<Vec<u64>, Rc<Plan>>> = RefCell::new(HashMap::new());
}

/// Forgets every cached plan of this thread.
pub fn clear_plan_cache() {
    PLANS.with(|p| p.borrow_mut().clear());
}

pub(crate) fn compile_cached(g: &GraphData, outputs: &[NodeId]) -> Result<Rc<Plan>> {
    let key = Graph::signature(g, outputs);
    if let Some(plan) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
        counters::plan_hit();
        return Ok(plan);
    }
    let plan = Rc::new(compile(g, outputs)?);
    counters::compiled();
    PLANS.with(|p| {
        let mut plans = p.borrow_mut();
        // Shapes that change every step (a growing KV cache) would grow the cache forever.
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(key, plan.clone());
    });
    Ok(plan)
}

fn reachable(nodes: &[Node], outputs: &[NodeId]) -> Vec<bool> {
    let mut seen = vec![false; nodes.len()];
    let mut stack: Vec<NodeId> = outputs.to_vec();
    while let Some(v) = stack.pop() {
        if !seen[v] {
            seen[v] = true;
            stack.extend(&nodes[v].inputs);
        }
    }
    seen
}

/// Consumers of each reachable node (an output counts as one use, `usize::MAX`).
fn consumers(nodes: &[Node], outputs: &[NodeId]) -> Vec<Vec<NodeId>> {
    let live = reachable(nodes, outputs);
    let mut out = vec![Vec::new(); nodes.len()];
    for (v, n) in nodes.iter().enumerate() {
        if live[v] {
            for &u in &n.inputs {
                out[u].push(v);
            }
        }
    }
    for &o in outputs {
        out[o].push(usize::MAX);
    }
    out
}

/// Inputs first, each node after everything it reads (depth-first from the outputs).
fn topo_order(nodes: &[Node], outputs: &[NodeId]) -> Vec<NodeId> {
    let mut state = vec![0u8; nodes.len()];
    let mut order = Vec::new();
    for &o in outputs {
        let mut stack = vec![(o, 0usize)];
        while let Some((v, i)) = stack.pop() {
            if i == 0 {
                if state[v] != 0 {
                    continue;
                }
                state[v] = 1;
            }
            if i < nodes[v].inputs.len() {
                stack.push((v, i + 1));
                let u = nodes[v].inputs[i];
                if state[u] == 0 {
                    stack.push((u, 0));
                }
            } else {
                state[v] = 2;
                order.push(v);
            }
        }
    }
    order
}

fn strip_views(nodes: &[Node], mut v: NodeId) -> NodeId {
    while let Op::View(_) = nodes[v].op {
        v = nodes[v].inputs[0];
    }
    v
}

/// `x · rsqrt(mean(x·x) + eps)` (any operand order, views between) → `(x, eps)`.
fn match_rms(nodes: &[Node], p: NodeId) -> Option<(NodeId, f32)> {
    let Op::Binary(BinaryOp::Mul) = nodes[p].op else { return None };
    let ins = &nodes[p].inputs;
    for (x, r) in [(ins[0], ins[1]), (ins[1], ins[0])] {
        let xs = &nodes[x].shape;
        let mut per_row = xs[..xs.len().saturating_sub(1)].to_vec();
        per_row.push(1);
        if xs.is_empty() || nodes[r].shape != per_row || nodes[p].shape != *xs {
            continue;
        }
        let rs = strip_views(nodes, r);
        let Op::Unary(UnaryOp::Rsqrt) = nodes[rs].op else { continue };
        let s = strip_views(nodes, nodes[rs].inputs[0]);
        let Op::Binary(BinaryOp::Add) = nodes[s].op else { continue };
        let (a, b) = (nodes[s].inputs[0], nodes[s].inputs[1]);
        let (m, eps) = match (&nodes[a].op, &nodes[b].op) {
            (_, Op::Const(e)) => (a, *e),
            (Op::Const(e), _) => (b, *e),
            _ => continue,
        };
        let m = strip_views(nodes, m);
        let Op::Reduce(ReduceOp::Mean) = nodes[m].op else { continue };
        let q = nodes[m].inputs[0];
        let Op::Binary(BinaryOp::Mul) = nodes[q].op else { continue };
        if nodes[q].inputs[0] == x && nodes[q].inputs[1] == x && nodes[m].shape == per_row[..per_row.len() - 1] {
            return Some((x, eps));
        }
    }
    None
}

/// RMSNorm written from primitives (`x · rsqrt(mean(x²) + eps) · w`) → the rms_norm kernel.
fn rewrite_rms_norm(nodes: &mut [Node]) -> usize {
    let mut count = 0;
    for v in 0..nodes.len() {
        let Op::Binary(BinaryOp::Mul) = nodes[v].op else { continue };
        let ins = nodes[v].inputs.clone();
        for (p, w) in [(ins[0], ins[1]), (ins[1], ins[0])] {
            if nodes[w].shape.len() != 1 || nodes[w].shape[0] != *nodes[v].shape.last().unwrap_or(&0) {
                continue;
            }
            if let Some((x, eps)) = match_rms(nodes, p) {
                if nodes[x].shape == nodes[v].shape && nodes[x].dtype == nodes[w].dtype {
                    nodes[v] = Node { op: Op::RmsNorm { eps }, inputs: vec![x, w], shape: nodes[v].shape.clone(), dtype: nodes[v].dtype };
                    count += 1;
                    break;
                }
            }
        }
    }
    count
}

/// Folds `+ bias[n]`, then SiLU/GELU, then `+ residual` that follow a matmul (each the
/// only consumer of the previous value) into the matmul's epilogue.
fn rewrite_matmul_epilogues(nodes: &mut [Node], outputs: &[NodeId]) -> usize {
    let uses = consumers(nodes, outputs);
    let mut count = 0;
    for v in 0..nodes.len() {
        let Op::Matmul { bias: false, activation: Activation::None, residual: false } = nodes[v].op else { continue };
        let out_shape = nodes[v].shape.clone();
        let n = *out_shape.last().unwrap();
        let (mut bias, mut act, mut res) = (None, Activation::None, None);
        let mut cur = v;
        while uses[cur].len() == 1 && uses[cur][0] != usize::MAX {
            let c = uses[cur][0];
            let node = &nodes[c];
            match node.op {
                Op::Binary(BinaryOp::Add) if node.inputs[0] != node.inputs[1] && node.shape == out_shape => {
                    let other = if node.inputs[0] == cur { node.inputs[1] } else { node.inputs[0] };
                    if bias.is_none() && act == Activation::None && res.is_none() && nodes[other].shape == [n] {
                        bias = Some(other);
                    } else if res.is_none() && nodes[other].shape == out_shape {
                        res = Some(other);
                    } else {
                        break;
                    }
                }
                Op::Unary(UnaryOp::Silu) if act == Activation::None && res.is_none() => act = Activation::Silu,
                Op::Unary(UnaryOp::GeluErf) if act == Activation::None && res.is_none() => act = Activation::GeluErf,
                _ => break,
            }
            cur = c;
        }
        if cur != v {
            let mut inputs = nodes[v].inputs.clone();
            inputs.extend(bias);
            inputs.extend(res);
            nodes[cur] = Node {
                op: Op::Matmul { bias: bias.is_some(), activation: act, residual: res.is_some() },
                inputs,
                shape: out_shape,
                dtype: nodes[v].dtype,
            };
            count += 1;
        }
    }
    count
}

/// `rms_norm(x + r, w)` → the add_rms_norm kernel, whose second output is the sum.
fn rewrite_add_rms_norm(nodes: &mut [Node]) {
    for v in 0..nodes.len() {
        let Op::RmsNorm { eps } = nodes[v].op else { continue };
        let (s, w) = (nodes[v].inputs[0], nodes[v].inputs[1]);
        let Op::Binary(BinaryOp::Add) = nodes[s].op else { continue };
        let (x, r) = (nodes[s].inputs[0], nodes[s].inputs[1]);
        if nodes[x].shape == nodes[s].shape && nodes[r].shape == nodes[s].shape {
            nodes[v] = Node { op: Op::AddRmsNorm { eps }, inputs: vec![x, r, w], shape: nodes[v].shape.clone(), dtype: nodes[v].dtype };
            nodes[s] = Node { op: Op::SecondOutput, inputs: vec![v], shape: nodes[s].shape.clone(), dtype: nodes[s].dtype };
        }
    }
}

/// Buffers a group would bind with `v` added: its tensor inputs plus the members read
/// from outside it (if it were emitted now).
fn bindings_with(nodes: &[Node], uses: &[Vec<NodeId>], members: &[NodeId], v: NodeId) -> usize {
    let set: HashSet<NodeId> = members.iter().copied().chain([v]).collect();
    let inputs: HashSet<NodeId> =
        set.iter().flat_map(|&m| nodes[m].inputs.iter().copied()).filter(|u| !set.contains(u) && !matches!(nodes[*u].op, Op::Const(_))).collect();
    let outputs = set.iter().filter(|&&m| uses[m].iter().any(|c| *c == usize::MAX || !set.contains(c))).count();
    inputs.len() + outputs
}

struct Group {
    shape: Vec<usize>,
    /// The dtype of its inputs and of its members before a closing cast.
    dtype: DType,
    /// The dtype it stores: `dtype`, or the target of the cast that closed it.
    out_dtype: DType,
    /// A cast to another dtype ended it: nothing joins after.
    closed: bool,
    members: Vec<NodeId>,
}

fn is_float_cast(nodes: &[Node], v: NodeId) -> bool {
    matches!(nodes[v].op, Op::Cast(_)) && nodes[v].dtype.is_float() && nodes[nodes[v].inputs[0]].dtype.is_float()
}

/// A scalar as the graph holds it (rounded to its dtype).
fn stored(value: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => nextflow_runtime::half::f16::from_f32(value).to_f32(),
        DType::BF16 => nextflow_runtime::half::bf16::from_f32(value).to_f32(),
        _ => value,
    }
}

fn numel(shape: &[usize]) -> u64 {
    shape.iter().product::<usize>() as u64
}

fn bytes_of(n: &Node) -> u64 {
    numel(&n.shape) * n.dtype.size() as u64
}

/// Whether the op writes a fresh dense buffer (so a later step may overwrite it in place).
fn fresh_dense(op: &Op) -> bool {
    !matches!(op, Op::Input(_) | Op::Const(_) | Op::View(_) | Op::Attention(_) | Op::Store { .. })
}

/// The static cost of running node `v` through its op.
fn node_cost(nodes: &[Node], v: NodeId, device: &Device) -> Cost {
    let n = &nodes[v];
    let read: u64 = n.inputs.iter().map(|&u| bytes_of(&nodes[u])).sum();
    let out = bytes_of(n);
    let elems = numel(&n.shape);
    let one = |flops: u64| Cost { launches: 1, bytes_read: read, bytes_written: out, flops };
    match &n.op {
        Op::Input(_) | Op::Const(_) | Op::View(_) | Op::SecondOutput => Cost::default(),
        Op::Unary(_) | Op::Binary(_) | Op::Cast(_) | Op::Reduce(_) => one(elems.max(numel(&nodes[n.inputs[0]].shape))),
        Op::Swiglu => one(4 * elems),
        Op::Matmul { bias, activation, residual } => {
            let a = &nodes[n.inputs[0]].shape;
            let k = *a.last().unwrap() as u64;
            let epilogue = (*bias as u64 + (*activation != Activation::None) as u64 + *residual as u64) * elems;
            one(2 * elems * k + epilogue)
        }
        Op::RmsNorm { .. } => one(4 * elems),
        Op::AddRmsNorm { .. } => Cost { launches: if device.is_cpu() { 2 } else { 1 }, bytes_read: read, bytes_written: 2 * out, flops: 5 * elems },
        Op::Softmax => one(5 * elems),
        Op::Attention(_) => {
            let (q, k) = (&nodes[n.inputs[0]].shape, &nodes[n.inputs[1]].shape);
            one(4 * numel(q) * k[2] as u64)
        }
        Op::Rope(_) => one(4 * elems),
        Op::Concat(_) => Cost { launches: if device.is_cpu() { 1 } else { n.inputs.len() as u64 }, bytes_read: read, bytes_written: out, flops: 0 },
        Op::Embedding => Cost { launches: 1, bytes_read: bytes_of(&nodes[n.inputs[1]]) + out, bytes_written: out, flops: 0 },
        Op::BlockedEmbedding => Cost { launches: n.inputs.len() as u64 - 1, bytes_read: bytes_of(&nodes[n.inputs[0]]) + out, bytes_written: out, flops: 0 },
        Op::Interpolate { .. } => one(8 * elems),
        Op::Conv2d { .. } => {
            let w = &nodes[n.inputs[1]].shape;
            one(2 * elems * (w[1] * w[2] * w[3]) as u64)
        }
        Op::GroupNorm { .. } => one(6 * elems),
        // Positions as rows (three copies), attention, and back.
        Op::SpatialAttention => {
            let s = &n.shape;
            let hw = (s[2] * s[3]) as u64;
            Cost { launches: 5, bytes_read: 2 * read, bytes_written: 4 * out, flops: 4 * elems * hw }
        }
        Op::Argmax => one(numel(&nodes[n.inputs[0]].shape)),
        Op::Sample { .. } => one(8 * numel(&nodes[n.inputs[0]].shape)),
        Op::NearestCodes(c) => one(3 * elems * (c.vocab() * c.dim()) as u64),
        Op::Store { .. } => {
            let src = bytes_of(&nodes[n.inputs[1]]);
            Cost { launches: if device.is_cpu() { 0 } else { 1 }, bytes_read: src, bytes_written: src, flops: 0 }
        }
    }
}

/// A dynamic input may only be attention's keys or values: nothing else may depend on a
/// size the plan does not know.
fn check_dynamic(g: &GraphData, outputs: &[NodeId]) -> Result<()> {
    let uses = consumers(&g.nodes, outputs);
    for (v, n) in g.nodes.iter().enumerate() {
        let Op::Input(k) = n.op else { continue };
        if !g.dynamic.iter().any(|(i, _)| *i == k) {
            continue;
        }
        for &c in &uses[v] {
            let ok = c != usize::MAX && matches!(g.nodes[c].op, Op::Attention(_)) && g.nodes[c].inputs[0] != v;
            if !ok {
                return Err(Error::Graph(format!("dynamic input {k} may only be read as attention keys or values")));
            }
        }
    }
    Ok(())
}

/// Concats along the last dim whose every part is a matmul read by nothing else (a weight
/// split into row blocks, one matmul per block): on a GPU each matmul writes its columns
/// into the concat's output, so the join copies nothing (the CPU backend joins the parts).
fn concat_targets(nodes: &[Node], uses: &[Vec<NodeId>], order: &[NodeId], device: &Device) -> HashMap<NodeId, (NodeId, usize)> {
    let mut into = HashMap::new();
    for &v in order {
        let Op::Concat(dim) = nodes[v].op else { continue };
        let parts = &nodes[v].inputs;
        let eligible = !device.is_cpu()
            && device.supports(nodes[v].dtype)
            && dim + 1 == nodes[v].shape.len()
            && parts.iter().all(|&u| matches!(nodes[u].op, Op::Matmul { .. }) && uses[u] == [v])
            && parts.iter().collect::<HashSet<_>>().len() == parts.len();
        if eligible {
            let mut start = 0;
            for &u in parts {
                into.insert(u, (v, start));
                start += nodes[u].shape[dim];
            }
        }
    }
    into
}

fn compile(g: &GraphData, outputs: &[NodeId]) -> Result<Plan> {
    check_dynamic(g, outputs)?;
    let mut nodes = g.nodes.clone();
    let fusion = g.options.fusion;
    let mut matmul_epilogues = 0;
    if fusion {
        rewrite_rms_norm(&mut nodes);
        matmul_epilogues = rewrite_matmul_epilogues(&mut nodes, outputs);
        if !g.device.is_cpu() {
            // One kernel on GPUs; on the CPU backend it is two passes anyway.
            rewrite_add_rms_norm(&mut nodes);
        }
    }
    let order = topo_order(&nodes, outputs);
    let uses = consumers(&nodes, outputs);
    let into = if fusion { concat_targets(&nodes, &uses, &order, &g.device) } else { HashMap::new() };
    // An op over constants alone runs as itself (a fused kernel needs one tensor input).
    let fusable = |v: NodeId| {
        fusion
            && (nodes[v].op.is_elementwise() || is_float_cast(&nodes, v))
            && nodes[v].dtype.is_float()
            && nodes[v].inputs.iter().any(|&u| !matches!(nodes[u].op, Op::Const(_)))
    };

    // Schedule: elementwise nodes gather into open groups (one per shape and dtype); a group
    // is flushed (emitted as one kernel) as soon as anything outside it reads one of its
    // members, so a group never depends on a step that depends on it.
    let max_buffers = nextflow_ops::fused::max_buffers(&g.device);
    let mut steps: Vec<Step> = Vec::new();
    let mut groups: Vec<Option<Group>> = Vec::new();
    let mut group_of: HashMap<NodeId, usize> = HashMap::new();
    let mut stats = PlanStats { nodes: order.len(), matmul_epilogues, ..Default::default() };

    let flush = |gid: usize, groups: &mut Vec<Option<Group>>, group_of: &mut HashMap<NodeId, usize>, steps: &mut Vec<Step>, stats: &mut PlanStats| {
        let Some(group) = groups[gid].take() else { return };
        for m in &group.members {
            group_of.remove(m);
        }
        let members: HashSet<NodeId> = group.members.iter().copied().collect();
        let has_const = group.members.iter().any(|&m| nodes[m].inputs.iter().any(|&u| matches!(nodes[u].op, Op::Const(_))));
        if group.members.len() == 1 && !has_const {
            let v = group.members[0];
            steps.push(Step { kind: StepKind::Node(v), reads: nodes[v].inputs.clone(), writes: vec![v], cost: Cost::default() });
            return;
        }
        let mut program = FusedProgram::default();
        let mut reg: HashMap<NodeId, usize> = HashMap::new();
        let mut reads = Vec::new();
        let mut ops = 0u64;
        for &m in &group.members {
            for &u in &nodes[m].inputs {
                if reg.contains_key(&u) {
                    continue;
                }
                let instr = match nodes[u].op {
                    Op::Const(c) => {
                        program.scalars.push(stored(c, nodes[u].dtype));
                        FusedInstr::Scalar(program.scalars.len() - 1)
                    }
                    _ => {
                        reads.push(u);
                        FusedInstr::Load(reads.len() - 1)
                    }
                };
                program.instrs.push(instr);
                reg.insert(u, program.instrs.len() - 1);
            }
            let i = &nodes[m].inputs;
            let instr = match nodes[m].op {
                Op::Unary(op) => Some(FusedInstr::Unary(op, reg[&i[0]])),
                Op::Binary(op) => Some(FusedInstr::Binary(op, reg[&i[0]], reg[&i[1]])),
                Op::Swiglu => Some(FusedInstr::SiluMul(reg[&i[0]], reg[&i[1]])),
                // A cast is the rounding below (widening is exact: nothing to do).
                Op::Cast(_) => None,
                _ => unreachable!("only elementwise ops and casts are grouped"),
            };
            let mut r = match instr {
                Some(instr) => {
                    program.instrs.push(instr);
                    ops += 1;
                    program.instrs.len() - 1
                }
                None => reg[&i[0]],
            };
            // Values the graph holds in a half type are rounded as storing them would.
            let d = nodes[m].dtype;
            if matches!(d, DType::F16 | DType::BF16) && (instr.is_some() || nodes[i[0]].dtype != d) {
                program.instrs.push(FusedInstr::Round(d, r));
                r = program.instrs.len() - 1;
            }
            reg.insert(m, r);
        }
        let writes: Vec<NodeId> =
            group.members.iter().copied().filter(|m| uses[*m].iter().any(|c| *c == usize::MAX || !members.contains(c))).collect();
        program.outputs = writes.iter().map(|w| reg[w]).collect();
        let elems = numel(&group.shape);
        let cost = Cost {
            launches: 1,
            bytes_read: reads.iter().map(|&u| bytes_of(&nodes[u])).sum(),
            bytes_written: writes.iter().map(|&w| bytes_of(&nodes[w])).sum(),
            flops: ops * elems,
        };
        stats.fused_kernels += (group.members.len() > 1) as usize;
        stats.fused_ops += if group.members.len() > 1 { group.members.len() } else { 0 };
        let n_out = writes.len();
        steps.push(Step { kind: StepKind::Fused { program, shape: group.shape, out_dtype: group.out_dtype, in_place: vec![None; n_out] }, reads, writes, cost });
    };

    for &v in &order {
        let node = &nodes[v];
        match node.op {
            Op::Input(_) | Op::SecondOutput => {}
            Op::Const(_) if fusion => {
                // Inlined into fused kernels; materialized once for any other reader.
                if uses[v].iter().any(|&c| c == usize::MAX || !fusable(c)) {
                    steps.push(Step { kind: StepKind::Node(v), reads: vec![], writes: vec![v], cost: Cost::default() });
                }
            }
            _ if fusable(v) => {
                let same = |gr: &Group| gr.shape == node.shape && gr.dtype == node.dtype && !gr.closed;
                let target = if is_float_cast(&nodes, v) {
                    // A cast closes the group of its input if nothing else leaves that group.
                    group_of.get(&node.inputs[0]).copied().filter(|&gid| {
                        let gr = groups[gid].as_ref().unwrap();
                        let inside = |c: &NodeId| *c == v || gr.members.contains(c);
                        gr.shape == node.shape && !gr.closed && gr.members.iter().all(|m| uses[*m].iter().all(inside))
                    })
                } else {
                    node.inputs
                        .iter()
                        .filter_map(|u| group_of.get(u).copied())
                        .find(|&gid| groups[gid].as_ref().is_some_and(same))
                        .or_else(|| (0..groups.len()).find(|&gid| groups[gid].as_ref().is_some_and(same)))
                };
                // Start over where joining would bind more buffers than the device allows.
                let target = target.filter(|&gid| {
                    let members = &groups[gid].as_ref().unwrap().members;
                    bindings_with(&nodes, &uses, members, v) <= max_buffers
                });
                for &u in &node.inputs {
                    if let Some(&h) = group_of.get(&u) {
                        if Some(h) != target {
                            flush(h, &mut groups, &mut group_of, &mut steps, &mut stats);
                        }
                    }
                }
                let gid = match target {
                    Some(gid) => gid,
                    None => {
                        let dtype = nodes[node.inputs[0]].dtype;
                        groups.push(Some(Group { shape: node.shape.clone(), dtype, out_dtype: dtype, closed: false, members: Vec::new() }));
                        groups.len() - 1
                    }
                };
                let group = groups[gid].as_mut().unwrap();
                group.members.push(v);
                if is_float_cast(&nodes, v) && node.dtype != group.dtype {
                    (group.out_dtype, group.closed) = (node.dtype, true);
                }
                group_of.insert(v, gid);
            }
            _ => {
                for &u in &node.inputs {
                    if let Some(&h) = group_of.get(&u) {
                        flush(h, &mut groups, &mut group_of, &mut steps, &mut stats);
                    }
                }
                let mut writes = vec![v];
                if let Op::AddRmsNorm { .. } = node.op {
                    // The sum, if anything reads it.
                    writes.extend(order.iter().copied().filter(|&s| matches!(nodes[s].op, Op::SecondOutput) && nodes[s].inputs[0] == v));
                }
                steps.push(Step { kind: StepKind::Node(v), reads: node.inputs.clone(), writes, cost: Cost::default() });
            }
        }
    }
    for gid in 0..groups.len() {
        flush(gid, &mut groups, &mut group_of, &mut steps, &mut stats);
    }
    let assembled: HashSet<NodeId> = into.values().map(|&(c, _)| c).collect();
    for step in steps.iter_mut() {
        if let StepKind::Node(v) = step.kind {
            step.cost = if assembled.contains(&v) { Cost::default() } else { node_cost(&nodes, v, &g.device) };
        }
    }

    // Liveness: a view keeps its source's buffer (its root) alive.
    let mut root: Vec<NodeId> = (0..nodes.len()).collect();
    for &v in &order {
        if let Op::View(_) | Op::Store { .. } = nodes[v].op {
            root[v] = root[nodes[v].inputs[0]];
        }
    }
    let kept: HashSet<NodeId> = outputs.iter().map(|&o| root[o]).collect();
    let mut last_use: HashMap<NodeId, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        for &r in &step.reads {
            last_use.insert(root[r], i);
        }
        if let StepKind::Node(v) = step.kind {
            // A view step reads its source.
            if let Op::View(_) = nodes[v].op {
                last_use.insert(root[v], i.max(*last_use.get(&root[v]).unwrap_or(&0)));
            }
        }
    }
    // In place: a fused output overwrites a dense input of its shape that dies here.
    for (i, step) in steps.iter_mut().enumerate() {
        let StepKind::Fused { shape, in_place, .. } = &mut step.kind else { continue };
        let mut taken = HashSet::new();
        for (k, &w) in step.writes.iter().enumerate() {
            let candidate = step.reads.iter().enumerate().position(|(j, &e)| {
                root[e] == e
                    && fresh_dense(&nodes[e].op)
                    && nodes[e].shape == *shape
                    && nodes[e].dtype == nodes[w].dtype
                    && last_use.get(&e) == Some(&i)
                    && !kept.contains(&e)
                    && !taken.contains(&j)
                    && step.reads.iter().filter(|&&o| root[o] == e).count() == 1
            });
            if let Some(j) = candidate {
                in_place[k] = Some(j);
                taken.insert(j);
                stats.in_place += 1;
            }
        }
    }
    let mut free_after: Vec<Vec<NodeId>> = vec![Vec::new(); steps.len()];
    for &v in &order {
        if let Some(&i) = last_use.get(&root[v]) {
            if !kept.contains(&root[v]) {
                free_after[i].push(v);
            }
        }
    }

    // Memory: allocate each step's fresh outputs, free dead roots after it; buffers are
    // reused greedily by size.
    let mut live = 0u64;
    let mut free_slots: HashMap<u64, usize> = HashMap::new();
    let mut transferred: HashSet<NodeId> = HashSet::new();
    for (i, step) in steps.iter().enumerate() {
        let in_place: Vec<Option<usize>> = match &step.kind {
            StepKind::Fused { in_place, .. } => in_place.clone(),
            _ => vec![None; step.writes.len()],
        };
        for (k, &w) in step.writes.iter().enumerate() {
            if !fresh_dense(&nodes[w].op) && !matches!(nodes[w].op, Op::Attention(_)) {
                continue;
            }
            if let Some(j) = in_place.get(k).copied().flatten() {
                transferred.insert(step.reads[j]);
                continue;
            }
            if into.contains_key(&w) {
                continue; // a column block of its concat's buffer
            }
            let b = bytes_of(&nodes[w]);
            live += b;
            stats.total_alloc_bytes += b;
            match free_slots.get_mut(&b) {
                Some(n) if *n > 0 => *n -= 1,
                _ => stats.buffers += 1,
            }
        }
        stats.peak_bytes = stats.peak_bytes.max(live);
        for &v in &free_after[i] {
            let n = &nodes[v];
            let allocated = root[v] == v && (fresh_dense(&n.op) || matches!(n.op, Op::Attention(_))) && !into.contains_key(&v);
            if allocated && !transferred.contains(&v) {
                let b = bytes_of(n);
                live -= b;
                *free_slots.entry(b).or_default() += 1;
            }
        }
    }
    stats.steps = steps.len();
    for s in &steps {
        stats.launches += s.cost.launches;
        stats.bytes_read += s.cost.bytes_read;
        stats.bytes_written += s.cost.bytes_written;
        stats.flops += s.cost.flops;
    }

    let mut consts = HashMap::new();
    for step in &steps {
        if let StepKind::Node(v) = step.kind {
            if let Op::Const(c) = nodes[v].op {
                consts.insert(v, Tensor::from_f64(&[c as f64], nodes[v].dtype, &[], &g.device)?);
            }
        }
    }
    let inputs = order.iter().filter_map(|&v| if let Op::Input(k) = nodes[v].op { Some((v, k)) } else { None }).collect();
    Ok(Plan {
        nodes,
        steps,
        outputs: outputs.to_vec(),
        free_after,
        consts,
        inputs,
        into,
        assembled,
        device: g.device.clone(),
        autotune: g.options.autotune,
        stats,
        arena: RefCell::default(),
    })
}

impl Plan {
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One line per step: what runs, and its cost.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, step) in self.steps.iter().enumerate() {
            let what = match &step.kind {
                StepKind::Node(v) => {
                    let op = match &self.nodes[*v].op {
                        Op::Rope(r) => format!("Rope(head_dim {})", r.head_dim),
                        Op::NearestCodes(c) => format!("NearestCodes({} codes)", c.vocab()),
                        Op::Attention(o) => format!("Attention({:?})", o.mask),
                        Op::Concat(_) if self.assembled.contains(v) => "Concat (its matmuls wrote it)".into(),
                        op => format!("{op:?}"),
                    };
                    format!("{op} {:?}", self.nodes[*v].shape)
                }
                StepKind::Fused { program, shape, in_place, .. } => format!(
                    "fused {} ops over {shape:?} ({} in, {} out{})",
                    program.instrs.iter().filter(|i| !matches!(i, FusedInstr::Load(_) | FusedInstr::Scalar(_) | FusedInstr::Round(..))).count(),
                    step.reads.len(),
                    step.writes.len(),
                    if in_place.iter().any(|p| p.is_some()) { ", in place" } else { "" }
                ),
            };
            s.push_str(&format!("{i:3}  {what}  [{} launch]\n", step.cost.launches));
        }
        s
    }

    /// Runs the plan on the graph's bound inputs and per-run params; returns the outputs in
    /// order. A store's destination must be the only handle to its buffer.
    pub fn run(&self, inputs: Vec<Option<Tensor>>, params: &[u64]) -> Result<Vec<Tensor>> {
        let _scope = nextflow_ops::plan_scope();
        if !arenas_on() {
            return self.run_steps(inputs, params);
        }
        // Its own arena serves the run's allocations and takes back the values it frees.
        let arena = std::mem::take(&mut *self.arena.borrow_mut());
        let (before_fresh, before_reused) = (arena.fresh, arena.reused);
        let (result, arena) = nextflow_runtime::with_arena(arena, || self.run_steps(inputs, params));
        counters::buffers(arena.fresh - before_fresh, arena.reused - before_reused);
        *self.arena.borrow_mut() = arena;
        result
    }

    fn run_steps(&self, mut inputs: Vec<Option<Tensor>>, params: &[u64]) -> Result<Vec<Tensor>> {
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        for &(v, k) in &self.inputs {
            let t = inputs.get_mut(k).and_then(Option::take).ok_or_else(|| Error::Graph(format!("input {k} is a placeholder: bind a tensor to run the graph")))?;
            values[v] = Some(t);
        }
        // Buffers the plan did not allocate (inputs, constants): not part of its peak.
        let foreign: Option<HashSet<*const nextflow_runtime::Storage>> = counters::measuring()
            .then(|| values.iter().flatten().chain(self.consts.values()).map(|t| t.storage() as *const _).collect());
        let mut measured_peak = 0u64;
        let param = |p: usize| params.get(p).copied().ok_or_else(|| Error::Graph(format!("the plan reads param {p}; {} were given", params.len())));
        let get = |values: &[Option<Tensor>], v: NodeId| -> Tensor { values[v].clone().expect("the schedule defines every value before its use") };
        for (i, step) in self.steps.iter().enumerate() {
            match &step.kind {
                // Its parts already wrote its columns.
                StepKind::Node(v) if self.assembled.contains(v) => {}
                StepKind::Node(v) if self.into.contains_key(v) => {
                    let (c, start) = self.into[v];
                    let target = &self.nodes[c];
                    if values[c].is_none() {
                        values[c] = Some(nextflow_ops::empty(&self.device, target.dtype, &target.shape)?);
                    }
                    let ins: Vec<Tensor> = self.nodes[*v].inputs.iter().map(|&u| get(&values, u)).collect();
                    let last = target.shape.len() - 1;
                    let view = get(&values, c).narrow(last, start, self.nodes[*v].shape[last])?;
                    let (ep, kernel) = self.matmul_args(*v, &ins)?;
                    nextflow_ops::matmul::matmul_into_with(&ins[0], &ins[1], ep, &view, kernel)?;
                    values[*v] = Some(view);
                }
                StepKind::Node(v) if matches!(self.nodes[*v].op, Op::Store { .. }) => {
                    let Op::Store { dim, start } = self.nodes[*v].op else { unreachable!() };
                    let (d, src) = (self.nodes[*v].inputs[0], self.nodes[*v].inputs[1]);
                    let src = get(&values, src);
                    let mut dst = values[d].take().expect("the schedule defines every value before its use");
                    nextflow_ops::write_into(&mut dst, dim, param(start)? as usize, &src)?;
                    values[*v] = Some(dst);
                }
                StepKind::Node(v) => {
                    let node = &self.nodes[*v];
                    let ins: Vec<Tensor> = node.inputs.iter().map(|&u| get(&values, u)).collect();
                    let results = match node.op {
                        Op::Sample { config, seed, step } => vec![nextflow_ops::sampling::sample(&ins[0], ins.get(1), &config, param(seed)?, param(step)? as u32)?],
                        _ => self.run_node(*v, &ins)?,
                    };
                    for (w, t) in step.writes.iter().zip(results) {
                        values[*w] = Some(t);
                    }
                }
                StepKind::Fused { program, shape, out_dtype, in_place } => {
                    let ins: Vec<Tensor> = step.reads.iter().map(|&u| get(&values, u)).collect();
                    let reuse = in_place.iter().map(|j| j.map(|j| ins[j].clone())).collect();
                    let results = fused_elementwise(&ins, shape, program, *out_dtype, reuse)?;
                    for (w, t) in step.writes.iter().zip(results) {
                        values[*w] = Some(t);
                    }
                }
            }
            match &step.kind {
                // Attention over a dynamic KV length: cost from this run's shapes.
                StepKind::Node(v) if matches!(self.nodes[*v].op, Op::Attention(_)) => {
                    let t = |u: NodeId| values[u].as_ref().map_or(0, |t| (t.numel() * t.dtype().size()) as u64);
                    let ins = &self.nodes[*v].inputs;
                    let q = values[ins[0]].as_ref().map_or(0, |t| t.numel()) as u64;
                    let skv = values[ins[1]].as_ref().map_or(0, |t| t.shape()[2]) as u64;
                    counters::record(&Cost { launches: 1, bytes_read: t(ins[0]) + t(ins[1]) + t(ins[2]), bytes_written: t(*v), flops: 4 * q * skv });
                }
                _ => counters::record(&step.cost),
            }
            if let Some(foreign) = &foreign {
                measured_peak = measured_peak.max(live_bytes(&values, foreign));
            }
            for &v in &self.free_after[i] {
                if let Some(t) = values[v].take() {
                    nextflow_runtime::reclaim(t);
                }
            }
        }
        counters::realized(self.stats.peak_bytes);
        if foreign.is_some() {
            counters::measured(self.stats.peak_bytes, measured_peak);
        }
        Ok(self.outputs.iter().map(|&o| get(&values, o)).collect())
    }

    /// The epilogue of matmul node `v` over its inputs `[a, b, bias?, residual?]`, and the
    /// kernel the autotune cache picks for it.
    fn matmul_args<'a>(&self, v: NodeId, ins: &'a [Tensor]) -> Result<(Epilogue<'a>, nextflow_ops::matmul::MatmulKernel)> {
        let Op::Matmul { bias, activation, residual } = self.nodes[v].op else { unreachable!("node {v} is not a matmul") };
        let ep = Epilogue { bias: bias.then(|| &ins[2]), activation, residual: residual.then(|| &ins[ins.len() - 1]) };
        let kernel = autotune::matmul_kernel(&ins[0], &ins[1], &ep, self.autotune)?;
        Ok((ep, kernel))
    }

    /// The norm kernel for `x` (rows along the last dim; GroupNorm: `groups` per image).
    fn norm_kernel(&self, kind: NormKind, x: &Tensor, groups: usize, run: &dyn Fn(nextflow_ops::NormKernel) -> Result<()>) -> Result<nextflow_ops::NormKernel> {
        let (rows, n) = match kind {
            NormKind::Group => (x.shape()[0] * groups, x.numel() / (x.shape()[0] * groups).max(1)),
            _ => (x.numel() / x.shape().last().copied().unwrap_or(1).max(1), x.shape().last().copied().unwrap_or(1)),
        };
        autotune::norm_kernel(autotune::NormShape { kind, rows, n, dtype: x.dtype() }, x.device(), self.autotune, run)
    }

    fn run_node(&self, v: NodeId, ins: &[Tensor]) -> Result<Vec<Tensor>> {
        use nextflow_ops as ops;
        let node = &self.nodes[v];
        let one = |t: nextflow_runtime::Result<Tensor>| -> Result<Vec<Tensor>> { Ok(vec![t?]) };
        match &node.op {
            Op::Input(_) | Op::SecondOutput => unreachable!("not a step"),
            Op::Const(_) => Ok(vec![self.consts[&v].clone()]),
            Op::Unary(op) => one(ops::unary(&ins[0], *op)),
            Op::Binary(op) => one(ops::binary(&ins[0], &ins[1], *op)),
            Op::Swiglu => one(ops::swiglu(&ins[0], &ins[1])),
            Op::Cast(d) => one(ops::cast(&ins[0], *d)),
            Op::View(view) => one(apply_view(view, &ins[0])),
            Op::Matmul { .. } => {
                let (ep, kernel) = self.matmul_args(v, ins)?;
                one(matmul_with(&ins[0], &ins[1], ep, kernel))
            }
            Op::RmsNorm { eps } => {
                let call = |k| ops::rms_norm_with(&ins[0], &ins[1], *eps, k);
                one(call(self.norm_kernel(NormKind::Rms, &ins[0], 1, &|k| call(k).map(drop).map_err(Error::from))?))
            }
            Op::AddRmsNorm { eps } => {
                let call = |k| ops::add_rms_norm_with(&ins[0], &ins[1], &ins[2], *eps, k);
                let (sum, normed) = call(self.norm_kernel(NormKind::AddRms, &ins[0], 1, &|k| call(k).map(drop).map_err(Error::from))?)?;
                Ok(vec![normed, sum])
            }
            Op::Reduce(op) => one(ops::reduce(&ins[0], *op)),
            Op::Softmax => one(ops::softmax(&ins[0])),
            Op::Attention(options) => {
                let kernel = autotune::attention_kernel(&ins[0], &ins[1], &ins[2], options, self.autotune)?;
                one(ops::attention_with(&ins[0], &ins[1], &ins[2], options, kernel))
            }
            Op::Rope(rope) => one(rope.apply(&ins[0], &ins[1])),
            Op::Concat(dim) => one(ops::concat(&ins.iter().collect::<Vec<_>>(), *dim)),
            Op::Embedding => one(ops::embedding(&ins[0], &ins[1])),
            Op::BlockedEmbedding => one(ops::Weight::from_blocks(ins[1..].to_vec()).and_then(|w| w.embedding(&ins[0]))),
            Op::Interpolate { h, w, mode } => one(ops::interpolate(&ins[0], *h, *w, *mode)),
            Op::Conv2d { geometry, bias, residual, upsample2x } => {
                let fusion = ops::ConvFusion { residual: residual.then(|| &ins[ins.len() - 1]), upsample2x: *upsample2x };
                one(ops::conv2d_fused(&ins[0], &ins[1], bias.then(|| &ins[2]), *geometry, fusion))
            }
            Op::GroupNorm { groups, eps, silu } => {
                let call = |k| ops::group_norm_with(&ins[0], *groups, &ins[1], &ins[2], *eps, *silu, k);
                one(call(self.norm_kernel(NormKind::Group, &ins[0], *groups, &|k| call(k).map(drop).map_err(Error::from))?))
            }
            Op::SpatialAttention => one(ops::spatial_attention(&ins[0], &ins[1], &ins[2])),
            Op::Argmax => one(ops::argmax(&ins[0])),
            Op::NearestCodes(c) => one(c.nearest(&ins[0], 1).and_then(|n| n.indices.reshape(&[ins[0].shape()[0]]))),
            Op::Sample { .. } | Op::Store { .. } => unreachable!("run by Plan::run (they read params)"),
        }
    }
}

/// Whether plans keep their buffers between runs: they do, on every device, unless
/// `NEXTFLOW_NO_ARENA=1` (for comparison). On the CPU an arena costs the first run of a plan
/// page faults malloc would have saved (the buffers it keeps are not handed to other sizes),
/// about +3 ms on the first tiny image of a process, and pays back on every replay (layer
/// steps replay dozens of times per image; a server replays everything).
fn arenas_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !crate::env_on("NEXTFLOW_NO_ARENA"))
}

/// Bytes of the distinct buffers `values` hold, those in `foreign` excluded.
fn live_bytes(values: &[Option<Tensor>], foreign: &HashSet<*const nextflow_runtime::Storage>) -> u64 {
    let mut seen = HashSet::new();
    let mut bytes = 0u64;
    for t in values.iter().flatten() {
        let s = t.storage() as *const nextflow_runtime::Storage;
        if !foreign.contains(&s) && seen.insert(s) {
            bytes += match t.storage() {
                nextflow_runtime::Storage::Cpu(b) => b.bytes().len() as u64,
                nextflow_runtime::Storage::Gpu(g) => g.bytes as u64,
            };
        }
    }
    bytes
}

/// A view of `t`; a reshape its strides cannot express reads a dense copy first.
fn apply_view(view: &ViewOp, t: &Tensor) -> nextflow_runtime::Result<Tensor> {
    match view.apply(t) {
        Err(_) if matches!(view, ViewOp::Reshape(_)) => view.apply(&nextflow_ops::contiguous(t)?),
        r => r,
    }
}
