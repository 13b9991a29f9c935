//! The compiler: lazy graphs, fusion, memory plan, plan cache and counters, on the CPU and
//! (when present) Vulkan. Outside CI a missing Vulkan adapter is reported as skipped.

use nextflow_ops::fused::{fused_elementwise, FusedInstr, FusedProgram};
use nextflow_ops::{BinaryOp, UnaryOp};
use nextflow_runtime::{Device, Tensor};

fn devices() -> Vec<Device> {
    let mut out = vec![Device::cpu()];
    match Device::open("vulkan") {
        Ok(d) => out.push(d),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI needs Vulkan: {e}"),
        Err(e) => eprintln!("SKIPPED vulkan: {e}"),
    }
    out
}

#[test]
fn fused_kernel_runs_a_program_over_broadcast_inputs() {
    for device in devices() {
        let a = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5, 4.0, -1.0], &[2, 3], &device).unwrap();
        let b = Tensor::from_slice(&[10.0f32, 20.0, 30.0], &[3], &device).unwrap();
        let program = FusedProgram {
            instrs: vec![
                FusedInstr::Load(0),
                FusedInstr::Load(1),
                FusedInstr::Binary(BinaryOp::Add, 0, 1),
                FusedInstr::Scalar(0),
                FusedInstr::Binary(BinaryOp::Mul, 2, 3),
                FusedInstr::Unary(UnaryOp::Neg, 4),
            ],
            outputs: vec![5, 2],
            scalars: vec![0.5],
        };
        let out = fused_elementwise(&[a.transpose(0, 1).unwrap().transpose(0, 1).unwrap(), b], &[2, 3], &program, vec![]).unwrap();
        device.sync().unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![-5.5, -9.0, -16.5, -5.25, -12.0, -14.5], "{device}");
        assert_eq!(out[1].to_vec::<f32>().unwrap(), vec![11.0, 18.0, 33.0, 10.5, 24.0, 29.0], "{device}");
    }
}
