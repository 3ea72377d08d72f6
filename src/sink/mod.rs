//! Where bytes go. The caller decides, tensor by tensor, through a [`Placement`]: the
//! pipeline asks it for every tensor before reading any data, then writes each tensor
//! into the destination it was given, through the [`Sink`] of its kind of memory
//! (`sinks.rs`: host memory in place; CUDA's staging lanes in `crate::cuda`).

mod arena;
mod sinks;
mod view;

pub(crate) use arena::pack;
pub use arena::{HostArena, ARENA_ALIGN};
pub(crate) use sinks::{HostSink, Place, Sink, Sinks, Writer};
pub use view::{Slice, View};

use std::collections::HashMap;

use crate::error::Result;
use crate::format::TensorInfo;

/// Where one tensor's bytes go.
#[derive(Debug)]
#[non_exhaustive]
pub enum Destination<'a> {
    /// Do not load this tensor.
    Skip,
    /// Host memory owned by the caller; at least `nbytes` long. Destinations of
    /// different tensors never overlap (Rust's borrow rules see to that).
    Host(&'a mut [u8]),
    /// Device memory on a CUDA device.
    Cuda {
        /// Device ordinal.
        device: i32,
        /// `CUdeviceptr` of the first byte.
        address: u64,
        /// Bytes writable at `address`.
        capacity: u64,
    },
    /// The destination `to` (host or CUDA memory) receives `view` of the tensor (a slice,
    /// another dtype) instead of its stored bytes: as many bytes as the view holds.
    View(View, Box<Destination<'a>>),
}

/// Decides where each tensor goes. Called once per tensor, in file order, on the thread
/// that started the load, before any byte of that tensor is written. An error stops
/// the load before any data is read.
pub trait Placement<'a> {
    /// The destination of `tensor`.
    fn place(&mut self, tensor: &TensorInfo) -> Result<Destination<'a>>;
}

impl<'a, F> Placement<'a> for F
where
    F: FnMut(&TensorInfo) -> Result<Destination<'a>>,
{
    fn place(&mut self, tensor: &TensorInfo) -> Result<Destination<'a>> {
        self(tensor)
    }
}

/// A placement from a map of tensor names to host buffers; tensors not in the map are
/// skipped.
#[derive(Debug, Default)]
pub struct HostBuffers<'a> {
    buffers: HashMap<String, &'a mut [u8]>,
}

impl<'a> HostBuffers<'a> {
    /// An empty map.
    pub fn new() -> Self {
        HostBuffers {
            buffers: HashMap::new(),
        }
    }

    /// Load tensor `name` into `buffer`.
    pub fn insert(&mut self, name: impl Into<String>, buffer: &'a mut [u8]) {
        self.buffers.insert(name.into(), buffer);
    }
}

impl<'a> Placement<'a> for HostBuffers<'a> {
    fn place(&mut self, tensor: &TensorInfo) -> Result<Destination<'a>> {
        Ok(match self.buffers.remove(tensor.name.as_str()) {
            Some(buffer) => Destination::Host(buffer),
            None => Destination::Skip,
        })
    }
}
