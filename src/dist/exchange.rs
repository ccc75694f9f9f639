//! [`Exchange`]: an all-to-all of tensor rows between the ranks as a Burn operation with its
//! own backward (the gradient of the rows a rank received goes back to the rank that sent
//! them: the same exchange with the counts swapped), and [`with_collective`], which names the
//! ranks the operation talks to while a forward or backward pass runs.
//!
//! Every rank runs the same operations in the same order (its autodiff graph has the same
//! shape on every rank), so the backward passes' exchanges pair up as the forward ones did.

// ndarray is deprecated in Burn 0.22; it stays this project's reference backend.
#![allow(deprecated)]

use std::cell::Cell;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, NdArray, backend_extension};
use burn::tensor::{Int, Tensor, TensorData};

use super::Collective;
use crate::error::{MoeError, Result};
use crate::grouped::{f32_values, host_usizes, read};

thread_local! {
    /// The collective of the `with_collective` call in progress on this thread.
    static CURRENT: Cell<Option<*const (dyn Collective + 'static)>> = const { Cell::new(None) };
}

/// Runs `f` with `comm` as the ranks [`exchange_rows`] talks to on this thread: wrap the
/// forward pass and the backward pass of a model with expert-parallel layers in it.
pub fn with_collective<T>(comm: &dyn Collective, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<*const (dyn Collective + 'static)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let ptr: *const (dyn Collective + '_) = comm;
    // SAFETY: only the lifetime is erased; the pointer is removed (by `Restore`, on return or
    // unwind) before `comm`'s borrow ends, and only read on this thread meanwhile.
    let ptr: *const (dyn Collective + 'static) = unsafe { std::mem::transmute(ptr) };
    let _restore = Restore(CURRENT.with(|c| c.replace(Some(ptr))));
    f()
}

/// Runs `f` on the collective of the [`with_collective`] call in progress.
///
/// # Errors
/// No `with_collective` call is in progress on this thread.
pub fn current_collective<T>(f: impl FnOnce(&dyn Collective) -> T) -> Result<T> {
    let ptr = CURRENT.with(|c| c.get()).ok_or_else(|| {
        MoeError::Distributed(
            "an expert-parallel layer ran outside burn_moe::dist::with_collective".into(),
        )
    })?;
    // SAFETY: set by `with_collective`, whose borrow outlives this call (same thread).
    Ok(f(unsafe { &*ptr }))
}

/// The row exchange as a backend operation (CPU backends: MPI works on host memory).
#[backend_extension(Flex, NdArray, Autodiff)]
pub trait Exchange: Backend {
    /// `x [rows, d]`, `send_rows [ranks]`, `recv_rows [ranks]` -> `[sum(recv_rows), d]`: the
    /// first `send_rows[0]` rows go to rank 0, the next `send_rows[1]` to rank 1, ...; the
    /// output holds the rows each rank sent this one, in rank order.
    fn exchange_rows(
        x: FloatTensor<Self>,
        send_rows: IntTensor<Self>,
        recv_rows: IntTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// Sends rows to the ranks and receives theirs, through the collective of the
/// [`with_collective`] call in progress (see [`Exchange::exchange_rows`]).
///
/// # Shapes
/// - x: `[sum(send_rows), d]`; send_rows, recv_rows: `[ranks]`
/// - output: `[sum(recv_rows), d]`
///
/// # Panics
/// Outside [`with_collective`], or when the collective fails (a rank died: the others stop at
/// their timeout).
pub fn exchange_rows(
    x: Tensor<2>,
    send_rows: Tensor<1, Int>,
    recv_rows: Tensor<1, Int>,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as Exchange>::exchange_rows(
        x.into_dispatch(),
        send_rows.into_dispatch(),
        recv_rows.into_dispatch(),
    ))
}

/// Through host memory: the tensors of the CPU backends are there already.
fn exchange_host<B: Backend>(
    x: FloatTensor<B>,
    send_rows: IntTensor<B>,
    recv_rows: IntTensor<B>,
) -> FloatTensor<B> {
    let data = read(B::float_into_data(x));
    let d = data.shape().dims::<2>()[1];
    let values = f32_values(data);
    let (send, recv) = (
        host_usizes(read(B::int_into_data(send_rows)), "exchange: row counts"),
        host_usizes(read(B::int_into_data(recv_rows)), "exchange: row counts"),
    );
    let scale = |r: &[usize]| r.iter().map(|&n| n * d).collect::<Vec<_>>();
    let out = current_collective(|comm| comm.exchange_f32(&values, &scale(&send), &scale(&recv)))
        .and_then(|sent| sent)
        .unwrap_or_else(|e| panic!("expert-parallel exchange: {e}"));
    let n = out.len() / d.max(1);
    // The CPU backends have one device.
    B::float_from_data(TensorData::new(out, [n, d]), &Default::default())
}

impl Exchange for Flex {
    fn exchange_rows(
        x: FloatTensor<Self>,
        send_rows: IntTensor<Self>,
        recv_rows: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        exchange_host::<Self>(x, send_rows, recv_rows)
    }
}

impl Exchange for NdArray {
    fn exchange_rows(
        x: FloatTensor<Self>,
        send_rows: IntTensor<Self>,
        recv_rows: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        exchange_host::<Self>(x, send_rows, recv_rows)
    }
}

#[derive(Debug)]
struct ExchangeBackward;

impl<B: Exchange> Backward<B, 1> for ExchangeBackward {
    /// The forward pass's send and receive row counts.
    type State = (IntTensor<B>, IntTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (send_rows, recv_rows) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::exchange_rows(dy, recv_rows, send_rows)
        });
    }
}

impl<B: Exchange, C: CheckpointStrategy> Exchange for Autodiff<B, C> {
    fn exchange_rows(
        x: FloatTensor<Self>,
        send_rows: IntTensor<Self>,
        recv_rows: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        match ExchangeBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (send_rows.clone(), recv_rows.clone());
                prep.finish(
                    state,
                    B::exchange_rows(x.into_primitive(), send_rows, recv_rows),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::exchange_rows(x.into_primitive(), send_rows, recv_rows))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Solo;
    use burn::tensor::Device;

    /// One process: the rows come back as they went, and their gradient too.
    #[test]
    fn one_rank_exchanges_with_itself_forward_and_backward() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::from_data(
            TensorData::new((0..12).map(|v| v as f32).collect::<Vec<_>>(), [4, 3]),
            &device,
        )
        .require_grad();
        let counts = || Tensor::<1, Int>::from_data(TensorData::new(vec![4i64], [1]), &device);
        let (y, grads) = with_collective(&Solo, || {
            let y = exchange_rows(x.clone(), counts(), counts());
            let grads = (y.clone() * y.clone()).sum().backward();
            (y, grads)
        });
        let want: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), want);
        let dx = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
        assert_eq!(dx, twice);
    }

    #[test]
    #[should_panic(expected = "outside burn_moe::dist::with_collective")]
    fn outside_with_collective_it_says_so() {
        let device = Device::flex();
        let x = Tensor::<2>::zeros([2, 2], &device);
        let counts = || Tensor::<1, Int>::from_data(TensorData::new(vec![2i64], [1]), &device);
        let _ = exchange_rows(x, counts(), counts()).into_data();
    }
}
