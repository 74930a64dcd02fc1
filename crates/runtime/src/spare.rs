//! Read and write buffers between batches, kept per thread.
//!
//! A connection takes its buffers when data arrives and gives them back when its batch is done,
//! so an idle connection holds none (thousands of idle clients cost little memory) and a busy
//! worker does not allocate and free them for every request.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::BytesMut;

/// Buffers kept per thread: as many as the connections one worker usually has mid-batch at once
/// (a proxy's clients hold theirs while their requests wait for the backends), at most 1 MiB of
/// read buffers.
const KEEP: usize = 64;
/// Reply buffers grown beyond this (a large value) are freed rather than kept.
const KEEP_OUTPUT: usize = 64 * 1024;

thread_local! {
    static INPUT: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static OUTPUT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty read buffer of `size` bytes.
pub fn take_input(size: usize) -> BytesMut {
    INPUT
        .with(|spare| spare.borrow_mut().pop())
        .filter(|buf| buf.capacity() >= size)
        .unwrap_or_else(|| BytesMut::with_capacity(size))
}

/// Returns a read buffer whose contents are consumed; kept when it is still `size` bytes.
pub fn give_back_input(mut buf: BytesMut, size: usize) {
    buf.clear();
    // Moves the empty view back to the start of its allocation: no copy, and no allocation
    // while no split-off part still shares it.
    buf.reserve(size);
    // One grown for a large value is not worth keeping.
    if buf.capacity() == size {
        keep(&INPUT, buf);
    }
}

/// An empty reply buffer (with the capacity of an earlier one when there is one).
pub fn take_output() -> Vec<u8> {
    OUTPUT
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_default()
}

/// Returns a reply buffer whose contents are written.
pub fn give_back_output(mut buf: Vec<u8>) {
    buf.clear();
    if buf.capacity() > 0 && buf.capacity() <= KEEP_OUTPUT {
        keep(&OUTPUT, buf);
    }
}

fn keep<T>(spare: &'static LocalKey<RefCell<Vec<T>>>, buf: T) {
    spare.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEEP {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_oversized_ones_dropped() {
        let mut input = take_input(1024);
        input.extend_from_slice(b"get a\r\n");
        let _ = input.split_to(7);
        let address = input.as_ptr() as usize;
        give_back_input(input, 1024);
        let again = take_input(1024);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 1024);
        assert_eq!(
            again.as_ptr() as usize,
            address - 7,
            "the same allocation, rewound"
        );

        let mut grown = take_input(1024);
        grown.reserve(4096);
        give_back_input(grown, 1024);
        assert_eq!(
            take_input(1024).capacity(),
            1024,
            "the oversized one was not kept"
        );

        let mut out = take_output();
        out.extend_from_slice(&[0; 100]);
        let capacity = out.capacity();
        give_back_output(out);
        let out = take_output();
        assert!(out.is_empty() && out.capacity() == capacity);
        give_back_output(vec![0; KEEP_OUTPUT + 1]);
        assert_eq!(take_output().capacity(), 0);
    }
}
