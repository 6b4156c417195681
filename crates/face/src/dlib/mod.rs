//! A reader for dlib's serialisation format (`serialize.h`): variable-length integers, dlib's
//! portable floats, strings, matrices and tensors, and ([`net`]) the layer stream of a `dnn`
//! network.
//!
//! Every read checks that the bytes it needs are there, and every length read from the file is
//! checked against the bytes that remain before anything is allocated, so a hostile length is
//! an error naming the file and the offset, never an abort.

pub mod net;

use crate::error::{FaceError, Result};

/// The longest string this reader accepts (dlib's version tags are under 32 bytes).
pub const MAX_STRING_LEN: usize = 256;

/// A cursor over the bytes of one dlib file.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    name: String,
    bytes: &'a [u8],
    pos: usize,
}

/// A dense tensor read from a `resizable_tensor`: its `[n, k, nr, nc]` shape and the values in
/// NCHW order.
#[derive(Debug, Clone, PartialEq)]
pub struct DlibTensor {
    /// `[num_samples, k, nr, nc]`.
    pub shape: [usize; 4],
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl DlibTensor {
    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A row-major matrix of floats read from a `dlib::matrix<float>`.
#[derive(Debug, Clone, PartialEq)]
pub struct DlibMatrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: Vec<f32>,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`; `name` (usually the file name) goes into every error.
    pub fn new(name: impl Into<String>, bytes: &'a [u8]) -> Self {
        Self {
            name: name.into(),
            bytes,
            pos: 0,
        }
    }

    /// The current byte offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The name errors carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An error at the current offset.
    pub fn error(&self, message: impl Into<String>) -> FaceError {
        self.error_at(self.pos, message)
    }

    /// An error at byte `offset`.
    pub fn error_at(&self, offset: usize, message: impl Into<String>) -> FaceError {
        FaceError::Format {
            file: self.name.clone(),
            offset,
            message: message.into(),
        }
    }

    /// Fails unless every byte has been read.
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.error(format!(
                "{} unexpected bytes after the end of the model",
                self.remaining()
            )));
        }
        Ok(())
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error(format!(
                "file ends inside {what} (needs {n} bytes, {} left)",
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A raw byte (`char`, `unsigned char`).
    pub fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1, "a byte")?[0])
    }

    /// A `bool`: the ASCII byte `'1'` or `'0'`.
    pub fn bool(&mut self) -> Result<bool> {
        let at = self.pos;
        match self.byte()? {
            b'1' => Ok(true),
            b'0' => Ok(false),
            b => Err(self.error_at(
                at,
                format!("expected a bool ('0' or '1'), found byte {b:#04x}"),
            )),
        }
    }

    /// A variable-length integer of at most `max_bytes` value bytes: a control byte (low 4
    /// bits: byte count; 0x80: sign, signed types only), then the magnitude little-endian.
    fn varint(&mut self, signed: bool, max_bytes: usize, what: &str) -> Result<i128> {
        let at = self.pos;
        let c = self.byte()?;
        let mask = if signed { 0x0f } else { 0x8f };
        let n = (c & mask) as usize;
        if c & 0x70 != 0 || n == 0 || n > max_bytes {
            return Err(self.error_at(at, format!("expected {what}, found control byte {c:#04x}")));
        }
        let mut v: u64 = 0;
        for (i, &b) in self.take(n, what)?.iter().enumerate() {
            v |= (b as u64) << (8 * i);
        }
        let v = v as i128;
        Ok(if signed && c & 0x80 != 0 { -v } else { v })
    }

    /// A signed integer (`int`, `long`, `long long`, `int64`) as dlib writes it.
    pub fn int(&mut self) -> Result<i64> {
        let at = self.pos;
        let v = self.varint(true, 8, "an integer")?;
        i64::try_from(v).map_err(|_| self.error_at(at, "integer out of range"))
    }

    /// A signed integer that must lie in `lo..=hi`; `what` names it in the error.
    pub fn int_in(&mut self, lo: i64, hi: i64, what: &str) -> Result<i64> {
        let at = self.pos;
        let v = self.int()?;
        if v < lo || v > hi {
            return Err(self.error_at(at, format!("{what} is {v}, expected {lo}..={hi}")));
        }
        Ok(v)
    }

    /// An unsigned integer (`unsigned long`, `size_t`, `uint64`).
    pub fn uint(&mut self) -> Result<u64> {
        Ok(self.varint(false, 8, "an unsigned integer")? as u64)
    }

    /// An unsigned integer that must lie in `lo..=hi`.
    pub fn uint_in(&mut self, lo: u64, hi: u64, what: &str) -> Result<u64> {
        let at = self.pos;
        let v = self.uint()?;
        if v < lo || v > hi {
            return Err(self.error_at(at, format!("{what} is {v}, expected {lo}..={hi}")));
        }
        Ok(v)
    }

    /// The element count of a container whose elements take at least `min_elem_bytes` bytes
    /// each: checked against the bytes that remain, so it can be allocated safely.
    pub fn len(&mut self, min_elem_bytes: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.uint()?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_elem_bytes.max(1)) <= self.remaining());
        fits.ok_or_else(|| {
            self.error_at(
                at,
                format!(
                    "{what} claims {n} elements, more than the {} bytes left can hold",
                    self.remaining()
                ),
            )
        })
    }

    /// A floating-point value: a signed mantissa (int64) then a signed exponent (int16),
    /// `mantissa * 2^exponent`; exponents 32000, 32001 and 32002 are +inf, -inf and NaN.
    pub fn f64(&mut self) -> Result<f64> {
        let at = self.pos;
        let mantissa = self.varint(true, 8, "a float's mantissa")?;
        let exponent = self.varint(true, 2, "a float's exponent")?;
        let (Ok(m), Ok(e)) = (i64::try_from(mantissa), i16::try_from(exponent)) else {
            return Err(self.error_at(at, "float out of range"));
        };
        Ok(match e {
            32000 => f64::INFINITY,
            32001 => f64::NEG_INFINITY,
            32002 => f64::NAN,
            e => ldexp(m as f64, e as i32),
        })
    }

    /// A float, read as [`Reader::f64`] and rounded to `f32`.
    pub fn f32(&mut self) -> Result<f32> {
        Ok(self.f64()? as f32)
    }

    /// A float that must be finite.
    pub fn finite_f32(&mut self, what: &str) -> Result<f32> {
        let at = self.pos;
        let v = self.f32()?;
        if !v.is_finite() {
            return Err(self.error_at(at, format!("{what} is {v}, expected a finite number")));
        }
        Ok(v)
    }

    /// A string: its length, then its bytes (no NUL). At most [`MAX_STRING_LEN`] bytes, UTF-8.
    pub fn string(&mut self) -> Result<String> {
        let at = self.pos;
        let n = self.uint()?;
        if n > MAX_STRING_LEN as u64 {
            return Err(self.error_at(
                at,
                format!("a string of {n} bytes (at most {MAX_STRING_LEN} expected here)"),
            ));
        }
        let bytes = self.take(n as usize, "a string")?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error_at(at, "a string is not UTF-8"))
    }

    /// A version tag that must be one of `allowed`; returns the one found.
    pub fn tag(&mut self, allowed: &[&str], what: &str) -> Result<String> {
        let at = self.pos;
        let s = self.string()?;
        if !allowed.contains(&s.as_str()) {
            return Err(self.error_at(
                at,
                format!("expected {what} (one of {allowed:?}), found `{s}`"),
            ));
        }
        Ok(s)
    }

    /// A `dlib::matrix<float>`: `-rows`, `-cols` (or positive in old files), then the values
    /// row-major, each as a dlib float.
    pub fn matrix(&mut self) -> Result<DlibMatrix> {
        let at = self.pos;
        let r = self.int()?.unsigned_abs();
        let c = self.int()?.unsigned_abs();
        // Each dlib float takes at least 4 bytes (two varints of at least 2 bytes each).
        let n = r
            .checked_mul(c)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n.saturating_mul(4) <= self.remaining())
            .ok_or_else(|| {
                self.error_at(
                    at,
                    format!(
                        "a {r}x{c} matrix, more than the {} bytes left can hold",
                        self.remaining()
                    ),
                )
            })?;
        let mut data = Vec::with_capacity(n);
        for _ in 0..n {
            data.push(self.f32()?);
        }
        Ok(DlibMatrix {
            rows: r as usize,
            cols: c as usize,
            data,
        })
    }

    fn shape4(&mut self, what: &str) -> Result<([usize; 4], usize)> {
        let at = self.pos;
        let mut shape = [0usize; 4];
        for s in &mut shape {
            let v = self.int()?;
            *s = usize::try_from(v)
                .map_err(|_| self.error_at(at, format!("{what} has a negative dimension {v}")))?;
        }
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.error_at(at, format!("{what} shape {shape:?} overflows")))?;
        Ok((shape, count))
    }

    /// A `resizable_tensor`: version 2, `n k nr nc`, then the values as little-endian IEEE
    /// `f32`, NCHW.
    pub fn tensor(&mut self) -> Result<DlibTensor> {
        let at = self.pos;
        let version = self.int()?;
        if version != 2 {
            return Err(self.error_at(at, format!("tensor version {version}, expected 2")));
        }
        let (shape, count) = self.shape4("a tensor")?;
        if count.saturating_mul(4) > self.remaining() {
            return Err(self.error_at(
                at,
                format!(
                    "a tensor of shape {shape:?} needs {} bytes, {} left",
                    count.saturating_mul(4),
                    self.remaining()
                ),
            ));
        }
        let raw = self.take(count * 4, "a tensor")?;
        let data = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(DlibTensor { shape, data })
    }

    /// An `alias_tensor`: version 1, then `n k nr nc` (no values).
    pub fn alias(&mut self) -> Result<[usize; 4]> {
        let at = self.pos;
        let version = self.int()?;
        if version != 1 {
            return Err(self.error_at(at, format!("alias tensor version {version}, expected 1")));
        }
        Ok(self.shape4("an alias tensor")?.0)
    }
}

/// `m * 2^e` without overflow in the intermediate power.
fn ldexp(m: f64, e: i32) -> f64 {
    let mut v = m;
    let mut e = e;
    while e > 1000 {
        v *= 2f64.powi(1000);
        e -= 1000;
    }
    while e < -1000 {
        v *= 2f64.powi(-1000);
        e += 1000;
    }
    v * 2f64.powi(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_sign_and_magnitude_varints() {
        let bytes = [0x01, 0x00, 0x81, 0x0a, 0x02, 0x80, 0x12, 0x81, 0x01];
        let mut r = Reader::new("t", &bytes);
        assert_eq!(r.int().unwrap(), 0);
        assert_eq!(r.int().unwrap(), -10);
        assert_eq!(r.uint().unwrap(), 4736);
        // A sign bit on an unsigned integer is an error.
        assert!(r.uint().is_err());
    }

    #[test]
    fn floats_decode_the_files_worked_examples() {
        let bytes = [
            0x03, 0x0a, 0xd7, 0xa3, 0x81, 0x1c, // 0.04
            0x03, 0x9a, 0x99, 0x99, 0x81, 0x18, // 0.6
            0x01, 0x00, 0x01, 0x0b, // 0.0
            0x07, 0x8c, 0x6a, 0x54, 0xf2, 0x50, 0xa6, 0x15, 0x81, 0x36, // 0.3382761351
            0x01, 0x01, 0x02, 0x00, 0x7d, // +inf (exponent 32000)
        ];
        let mut r = Reader::new("t", &bytes);
        assert_eq!(r.f32().unwrap(), 0.04);
        assert_eq!(r.f32().unwrap(), 0.6);
        assert_eq!(r.f64().unwrap(), 0.0);
        assert!((r.f64().unwrap() - 0.3382761351).abs() < 1e-10);
        assert_eq!(r.f64().unwrap(), f64::INFINITY);
        r.finish().unwrap();
    }

    #[test]
    fn strings_bools_and_tensors() {
        let mut bytes = vec![0x01, 0x05, b'c', b'o', b'n', b'_', b'4', b'1', b'0'];
        bytes.extend([0x01, 0x02, 0x01, 0x01, 0x01, 0x02, 0x01, 0x01, 0x01, 0x01]);
        bytes.extend(1.5f32.to_le_bytes());
        bytes.extend((-2.0f32).to_le_bytes());
        let mut r = Reader::new("t", &bytes);
        assert_eq!(r.tag(&["con_4"], "a layer").unwrap(), "con_4");
        assert!(r.bool().unwrap());
        assert!(!r.bool().unwrap());
        let t = r.tensor().unwrap();
        assert_eq!(t.shape, [1, 2, 1, 1]);
        assert_eq!(t.data, vec![1.5, -2.0]);
        r.finish().unwrap();
    }

    #[test]
    fn hostile_lengths_are_errors_naming_the_offset() {
        // A tensor claiming 2^40 values in a 20-byte file.
        let bytes = [
            0x01, 0x02, 0x05, 0, 0, 0, 0, 1, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
        ];
        let err = Reader::new("model.dat", &bytes).tensor().unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("model.dat: at byte 0:"), "{msg}");
        // A vector claiming 10^12 elements.
        let bytes = [0x05, 0x00, 0x10, 0xa5, 0xd4, 0xe8];
        assert!(Reader::new("v", &bytes).len(1, "a vector").is_err());
        // A string of a million bytes.
        let bytes = [0x03, 0x40, 0x42, 0x0f];
        assert!(Reader::new("s", &bytes).string().is_err());
        // Truncated float.
        assert!(Reader::new("f", &[0x03, 0x0a]).f32().is_err());
    }
}
