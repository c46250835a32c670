//! Decoding of the chunked transfer coding (RFC 9112 §7.1) of a node's response body, as it
//! streams: data comes out as zero-copy slices of the connection's read buffer.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size plus extensions) accepted.
const MAX_LINE: usize = 4096;

/// Most trailer bytes accepted (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// What one decoding step found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A piece of the body.
    Data(Bytes),
    /// The buffer ends mid-frame: read more and call again.
    NeedMore,
    /// The last chunk and the trailers are consumed; the body is complete.
    Done,
}

/// A framing error: the node's body cannot be trusted (nor its connection reused).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body from the node: {0}")]
pub struct ChunkedError(&'static str);

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// Complete.
    Done,
}

/// Incremental decoder for one chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: State::Size,
            trailer_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Consumes from `buf` up to the next piece of data (returned) or the end of the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(end) = line_end(buf, MAX_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = remaining.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    self.state = if take == remaining {
                        State::DataEnd
                    } else {
                        State::Data(remaining - take)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkedError("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(end) = line_end(buf, MAX_TRAILERS - self.trailer_bytes)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(end + 2);
                    self.trailer_bytes += end + 2;
                    if end == 0 {
                        self.state = State::Done;
                    }
                }
                State::Done => return Ok(Decoded::Done),
            }
        }
    }
}

/// The length of the CRLF-terminated line at the start of `buf` (without the CRLF), or `None`
/// when the line is not complete yet. A bare LF or a line longer than `max` is an error.
fn line_end(buf: &[u8], max: usize) -> Result<Option<usize>, ChunkedError> {
    match buf.iter().take(max + 2).position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && buf[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(ChunkedError("line not ended by CRLF")),
        None if buf.len() >= max + 2 => Err(ChunkedError("line too long")),
        None => Ok(None),
    }
}

/// Parses `chunk-size [ BWS ";" chunk-ext ]`.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkedError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkedError("chunk size missing"));
    }
    if digits > 16 {
        return Err(ChunkedError("chunk size too large"));
    }
    let size = line[..digits].iter().fold(0u64, |size, &b| {
        let digit = (b as char).to_digit(16).expect("a hex digit") as u64;
        size << 4 | digit
    });
    // Whitespace may follow the size (some servers pad it), then only extensions.
    let ext = line[digits..].trim_ascii_start();
    if !(ext.is_empty() || ext[0] == b';') || ext.contains(&b'\r') {
        return Err(ChunkedError("invalid chunk size line"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the body or the error.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Done => return Ok((body, buf.len() + input.len() - fed)),
                Decoded::NeedMore => {
                    assert!(fed < input.len(), "decoder wants more than the input has");
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn bodies_decode_the_same_whatever_pieces_they_arrive_in() {
        let input = b"4\r\nWiki\r\n5;name=val\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64, input.len()] {
            let (body, left) = decode_in_steps(input, step).unwrap();
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
            assert_eq!(
                left, 4,
                "the next response's bytes stay unread (step {step})"
            );
        }
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for input in [
            &b"x\r\n"[..],
            b"4\nWiki\r\n0\r\n\r\n",
            b"4\r\nWikiXX0\r\n\r\n",
            b"4 x\r\nWiki\r\n",
            b"11111111111111111\r\n",
            b"0\r\nX-T: 1\n\r\n",
        ] {
            assert!(
                decode_in_steps(input, 64).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn an_endless_size_line_is_refused_without_waiting_for_its_end() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&[b'0'; MAX_LINE + 2][..]);
        assert_eq!(decoder.decode(&mut buf), Err(ChunkedError("line too long")));
    }
}
