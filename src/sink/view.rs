//! What a destination may ask of a tensor beyond its stored bytes: one slice along one
//! dimension, and another floating-point dtype.

use crate::dtype::DType;

/// A range of indices along one dimension of a tensor: `start..stop` of dimension `dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The dimension sliced (0 is the outermost).
    pub dim: u32,
    /// First index along `dim`.
    pub start: u64,
    /// One past the last index along `dim`.
    pub stop: u64,
}

/// How a tensor lands in its destination: all of it or a [`Slice`], as stored or converted
/// to another floating-point dtype. The destination receives the selected elements densely,
/// row-major, in the destination dtype.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct View {
    /// The part of the tensor wanted; `None` for all of it.
    pub slice: Option<Slice>,
    /// The dtype to convert to; `None` for the stored one.
    pub dtype: Option<DType>,
}

impl View {
    /// The whole tensor, as stored.
    pub fn whole() -> View {
        View::default()
    }

    /// This view, restricted to `start..stop` of dimension `dim`.
    pub fn slice(mut self, dim: u32, start: u64, stop: u64) -> View {
        self.slice = Some(Slice { dim, start, stop });
        self
    }

    /// This view, converted to `dtype`.
    pub fn dtype(mut self, dtype: DType) -> View {
        self.dtype = Some(dtype);
        self
    }

    /// Whether this view is the whole tensor as stored.
    pub fn is_whole(&self) -> bool {
        self.slice.is_none() && self.dtype.is_none()
    }
}
