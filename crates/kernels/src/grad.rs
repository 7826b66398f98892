//! Backward passes of the fused ops by recomputation: the op's plain candle composition is run
//! again on detached copies of its inputs and differentiated with candle's autograd. Exact (the
//! composition is what the fused forward is tested against) and simple; the backward runs at the
//! composition's speed.

use candle_core::{Result, Tensor, Var};

/// Gradients of `<f(args), grad>` with respect to every argument, `f` being a composition of
/// candle ops.
pub(crate) fn via_composition(
    args: &[&Tensor],
    grad: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let vars = args
        .iter()
        .map(|t| Var::from_tensor(&t.detach()))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&inputs)?;
    let grads = (out * grad.detach())?.sum_all()?.backward()?;
    inputs
        .iter()
        .map(|t| match grads.get(t) {
            Some(g) => Ok(g.clone()),
            None => t.zeros_like(),
        })
        .collect()
}
