//! The placement room: the one owner of "is this destination right?". It turns what a
//! placement answered into a checked destination before any byte is read: the view
//! resolved against the tensor, the bytes the destination receives against its capacity, a
//! NULL address, overlap with the destinations handed out before (one check, for host and
//! device memory alike), the sink of a device and the size of its staging lanes. A C
//! placement (`ffi/placement.rs`) only translates `plaid_destination` and comes here to
//! turn a host address into memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::plan::{Out, Placed};
use super::select::Selection;
use crate::error::{Error, Result};
use crate::format::TensorInfo;
use crate::sink::{Destination, Sink, Sinks, View};

/// The memory an address lies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Space {
    /// The host's address space.
    Host,
    /// The memory of a CUDA device, by ordinal.
    Cuda(i32),
}

/// The address ranges handed out to tensors in one load, refusing any that overlaps an
/// earlier one in the same memory (two workers would write the same bytes).
#[derive(Default)]
pub(crate) struct Claims {
    /// (space, start) -> (end, tensor name).
    ranges: BTreeMap<(Space, u64), (u64, compact_str::CompactString)>,
}

impl Claims {
    /// Record `[start, start + len)` of `space` for `tensor` (empty ranges take nothing).
    pub(crate) fn claim(&mut self, space: Space, tensor: &str, start: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = start.checked_add(len).ok_or_else(|| {
            Error::invalid(format!(
                "tensor '{tensor}': destination wraps around the address space"
            ))
        })?;
        let before = self.ranges.range((space, 0)..(space, end)).next_back();
        if let Some((&(_, other_start), (other_end, other))) = before {
            if *other_end > start {
                return Err(Error::invalid(match space {
                    Space::Host => format!(
                        "tensor '{tensor}': host destination [{start:#x}, {end:#x}) overlaps that of tensor '{other}' [{other_start:#x}, {other_end:#x})"
                    ),
                    Space::Cuda(device) => format!(
                        "the CUDA destinations of tensors '{other}' and '{tensor}' overlap on device {device}"
                    ),
                }));
            }
        }
        self.ranges.insert((space, start), (end, tensor.into()));
        Ok(())
    }
}

/// What `view` of `tensor` selects (`None`: all of it as stored) and the bytes its
/// destination receives.
pub(crate) fn received(tensor: &TensorInfo, view: &View) -> Result<(Option<Selection>, u64)> {
    if view.is_whole() {
        return Ok((None, tensor.nbytes));
    }
    let selection = Selection::resolve(tensor, view)?;
    let needed = selection
        .as_ref()
        .map_or(tensor.nbytes, Selection::dest_len);
    Ok((selection, needed))
}

fn capacity_error(tensor: &TensorInfo, needed: u64, capacity: u64) -> Error {
    Error::Capacity {
        tensor: tensor.name.to_string(),
        needed,
        capacity,
    }
}

/// The host memory at `address` that receives the `needed` bytes of `tensor`, checked:
/// `capacity` is enough, the address is not NULL (unless nothing is received), the range
/// overlaps none claimed before in `claims`.
///
/// # Safety
/// `capacity` bytes at `address` are writable, and no other reference to them is used,
/// until the load returns (the promise a C placement makes).
pub(crate) unsafe fn host_memory<'a>(
    claims: &mut Claims,
    tensor: &TensorInfo,
    address: u64,
    capacity: u64,
    needed: u64,
) -> Result<&'a mut [u8]> {
    if capacity < needed {
        return Err(capacity_error(tensor, needed, capacity));
    }
    if needed == 0 {
        return Ok(&mut []);
    }
    if address == 0 {
        return Err(Error::invalid(format!(
            "tensor '{}': host destination address is NULL",
            tensor.name
        )));
    }
    let len = isize::try_from(needed)
        .map(|n| n as usize)
        .map_err(|_| Error::invalid("tensor exceeds the address space"))?;
    claims.claim(Space::Host, &tensor.name, address, needed)?;
    // SAFETY: the caller promised `capacity >= needed` writable bytes at `address`
    // (checked above), valid and used by nothing else until the load returns; no other
    // tensor of this load was given any of them (the claim above).
    Ok(unsafe { std::slice::from_raw_parts_mut(address as *mut u8, len) })
}

/// The destinations of one load, admitted one by one.
pub(super) struct Room<'s> {
    sinks: &'s Sinks,
    cuda_stream: usize,
    /// The device sinks this load stages through, and each device's position among them.
    pub(super) staged: Vec<Arc<dyn Sink>>,
    by_device: HashMap<i32, usize>,
    claims: Claims,
}

impl<'s> Room<'s> {
    pub(super) fn new(sinks: &'s Sinks, cuda_stream: usize) -> Room<'s> {
        Room {
            sinks,
            cuda_stream,
            staged: Vec::new(),
            by_device: HashMap::new(),
            claims: Claims::default(),
        }
    }

    /// Check what the placement answered for `tensor`: `None` where it is not loaded.
    pub(super) fn admit<'t, 'a>(
        &mut self,
        tensor: &'t TensorInfo,
        answer: Destination<'a>,
    ) -> Result<Option<Placed<'t, 'a>>> {
        let (dest, view) = match answer {
            // A view of nothing is nothing: not checked.
            Destination::View(_, to) if matches!(*to, Destination::Skip) => return Ok(None),
            Destination::View(_, to) if matches!(*to, Destination::View(..)) => {
                return Err(Error::invalid(format!(
                    "tensor '{}': a view of a view",
                    tensor.name
                )));
            }
            Destination::View(view, to) => (*to, view),
            dest => (dest, View::whole()),
        };
        let (selection, needed) = match &dest {
            Destination::Skip => return Ok(None),
            _ => received(tensor, &view)?,
        };
        let out = match dest {
            Destination::Skip | Destination::View(..) => unreachable!("taken above"),
            // Host memory is borrowed: Rust saw that no two destinations overlap (a C
            // placement claimed its ranges on the way in, `host_memory`).
            Destination::Host(buffer) => {
                let capacity = buffer.len() as u64;
                if capacity < needed {
                    return Err(capacity_error(tensor, needed, capacity));
                }
                Out::Host(&mut buffer[..needed as usize])
            }
            Destination::Cuda {
                device,
                address,
                capacity,
            } => {
                if capacity < needed {
                    return Err(capacity_error(tensor, needed, capacity));
                }
                if address == 0 && needed > 0 {
                    return Err(Error::invalid(format!(
                        "tensor '{}': CUDA destination address is NULL",
                        tensor.name
                    )));
                }
                self.claims
                    .claim(Space::Cuda(device), &tensor.name, address, needed)?;
                let sink = self
                    .device_sink(device)
                    .map_err(|e| e.in_tensor(&tensor.name))?;
                let len = usize::try_from(needed).map_err(Error::invalid)?;
                Out::Staged { sink, address, len }
            }
        };
        Ok(Some((tensor, out, selection)))
    }

    /// Once every tensor is admitted: get the lanes of the device sinks this load stages
    /// through ready, `lanes` each with buffers of `request` bytes (which hold a batch
    /// too), or of a whole cipher unit where that is larger (an encrypted block is
    /// decrypted whole in the lane before it is sent). Returns the sinks, by position.
    pub(super) fn prepare_staging(
        self,
        placed: &[Placed<'_, '_>],
        lanes: usize,
        request: usize,
    ) -> Result<Vec<Arc<dyn Sink>>> {
        if self.staged.is_empty() {
            return Ok(self.staged);
        }
        let unit = placed
            .iter()
            .filter(|(_, out, _)| matches!(out, Out::Staged { .. }))
            .filter_map(|(t, _, _)| t.encryption.as_deref().map(|e| e.unit()))
            .max()
            .unwrap_or(1);
        let buffer = request.max(usize::try_from(unit).unwrap_or(usize::MAX));
        for sink in &self.staged {
            sink.prepare(lanes, buffer)?;
        }
        Ok(self.staged)
    }

    /// The position in `staged` of the sink of `device`, made on its first tensor.
    fn device_sink(&mut self, device: i32) -> Result<usize> {
        if let Some(&k) = self.by_device.get(&device) {
            return Ok(k);
        }
        self.staged.push(self.sinks.cuda(device, self.cuda_stream)?);
        self.by_device.insert(device, self.staged.len() - 1);
        Ok(self.staged.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_overlap_check_for_host_and_device_memory() {
        let mut claims = Claims::default();
        claims.claim(Space::Host, "a", 0x1000, 0x100).unwrap();
        // Another memory, the same addresses: no overlap.
        claims.claim(Space::Cuda(0), "b", 0x1000, 0x100).unwrap();
        claims.claim(Space::Cuda(1), "c", 0x1000, 0x100).unwrap();
        // Touching, not overlapping; empty ranges take nothing.
        claims.claim(Space::Host, "d", 0x1100, 0x10).unwrap();
        claims.claim(Space::Host, "e", 0x1000, 0).unwrap();
        let host = claims.claim(Space::Host, "f", 0x10f0, 2).unwrap_err();
        assert!(
            host.to_string().contains("'f'") && host.to_string().contains("'a'"),
            "{host}"
        );
        let device = claims.claim(Space::Cuda(1), "g", 0x800, 0x801).unwrap_err();
        assert!(
            device
                .to_string()
                .contains("'c' and 'g' overlap on device 1"),
            "{device}"
        );
        let wraps = claims.claim(Space::Host, "h", u64::MAX, 2).unwrap_err();
        assert!(wraps.to_string().contains("wraps"), "{wraps}");
    }
}
