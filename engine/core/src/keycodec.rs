//! Order-preserving ("memcomparable") serde encoding for keys of an ordered
//! key-value store.
//!
//! RocksDB compares keys byte-wise, so the encoding is designed such that
//! comparing two encodings with `<[u8]>::cmp` gives the same answer as `Ord`
//! on the values, and such that every encoding is prefix-free: a composite key
//! stored as `enc(a) ++ enc(b)` sorts by `a` first and can be range-scanned by
//! the prefix `enc(a)`.
//!
//! Layout:
//!
//! | value                       | bytes                                                 |
//! |-----------------------------|-------------------------------------------------------|
//! | `u8`..`u128`                | big-endian, fixed width                               |
//! | `i8`..`i128`                | big-endian, fixed width, sign bit flipped             |
//! | `bool`                      | `0x00` / `0x01`                                       |
//! | `char`                      | as `u32`                                              |
//! | `f32` / `f64`               | IEEE bits; all flipped if negative, else the sign bit |
//! | `str`, bytes                | each `0x00` as `0x00 0xFF`, then `0x00 0x01`          |
//! | `Option`                    | `None` = `0x00`, `Some(v)` = `0x01` ++ `v`            |
//! | unit, unit struct           | nothing                                               |
//! | newtype struct              | the inner value                                       |
//! | seq                         | `0x01` ++ element for each element, then `0x00`       |
//! | map                         | `0x01` ++ key ++ value for each entry, then `0x00`    |
//! | tuple, tuple struct, struct | fields concatenated                                   |
//! | enum                        | variant index as big-endian `u32`, then the content   |
//!
//! The format is not self-describing: decoding is driven entirely by the
//! target type, so `deserialize_any` (untagged and internally tagged enums,
//! `#[serde(flatten)]`) is unsupported.

use std::borrow::Cow;
use std::fmt::Display;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

/// Follows a `0x00` inside an escaped string/byte string: the `0x00` was data.
const ESCAPED_NUL: u8 = 0xFF;
/// Follows a `0x00` inside an escaped string/byte string: end of the value.
/// Lower than [`ESCAPED_NUL`] so that a string sorts before its extensions.
const STRING_END: u8 = 0x01;
/// Precedes each seq element / map entry. Higher than [`SEQ_END`] so that a
/// sequence sorts before its extensions.
const SEQ_ELEMENT: u8 = 0x01;
const SEQ_END: u8 = 0x00;
const NONE_TAG: u8 = 0x00;
const SOME_TAG: u8 = 0x01;

/// Nesting limit while decoding. Recursive types (`enum Tree { Node(Vec<Tree>) }`)
/// would otherwise let hostile input overflow the stack.
const MAX_DEPTH: usize = 128;

/// Errors from [`encode_key`], [`decode_key`] and friends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyCodecError {
    /// The value's serde shape cannot be represented (or decoded) in this format.
    #[error("key codec does not support {0}")]
    Unsupported(&'static str),
    /// The input ended in the middle of a value.
    #[error("unexpected end of key bytes")]
    Eof,
    /// [`decode_key`] decoded a whole value but this many bytes were left over.
    #[error("{0} trailing bytes after key")]
    TrailingBytes(usize),
    /// A decoded string is not valid UTF-8.
    #[error("key string is not valid UTF-8")]
    InvalidUtf8,
    /// A byte that must be one of a few marker values was something else.
    #[error("invalid {what} byte {byte:#04x} at offset {offset}")]
    InvalidTag {
        /// Which marker was being read (e.g. `"bool"`, `"option tag"`).
        what: &'static str,
        /// The byte found.
        byte: u8,
        /// Offset of that byte in the input.
        offset: usize,
    },
    /// A decoded `char` is not a Unicode scalar value.
    #[error("invalid char code point {0:#x}")]
    InvalidChar(u32),
    /// The key nests deeper than the decoder allows.
    #[error("key nesting exceeds {MAX_DEPTH} levels")]
    DepthLimitExceeded,
    /// A `Deserialize` impl stopped reading a sequence early, so the position
    /// of everything after it is unknown.
    #[error("{0} was not read to the end")]
    UnreadElements(&'static str),
    /// An error raised by a `Serialize`/`Deserialize` impl (e.g. unknown variant).
    #[error("{0}")]
    Custom(String),
}

impl ser::Error for KeyCodecError {
    fn custom<T: Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }
}

impl de::Error for KeyCodecError {
    fn custom<T: Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }
}

/// Encodes `key` so that byte-wise comparison of encodings matches `Ord` on
/// the values, and no encoding is a proper prefix of another encoding of the
/// same type.
///
/// The ordering guarantee holds whenever the type's `Serialize` output mirrors
/// its `Ord`, which is the case for primitives, `String`, `Option`, `Vec`,
/// tuples, `BTreeMap`/`BTreeSet`, and `#[derive(Serialize, Ord)]` structs and
/// enums (fields and variants compare in declaration order, as serialized).
/// Limits:
///
/// - Floats follow [`f64::total_cmp`], not `PartialOrd`: `-0.0` sorts before
///   `0.0`, positive NaNs after `+inf`, negative NaNs before `-inf`, and NaNs
///   with different payloads are different keys.
/// - Maps and sets are ordered by their serialization order, so a `HashMap`
///   key has no meaningful order and is not even deterministic.
/// - Hand-written `Ord`/`Serialize` impls, or serde attributes that reorder or
///   skip fields relative to `Ord`, break the guarantee for that type.
/// - Enums order by variant index, so reordering variants changes stored keys.
///
/// `#[serde(skip_serializing_if)]` fields are rejected with
/// [`KeyCodecError::Unsupported`], because structs are positional and an
/// omitted field could not be decoded.
pub fn encode_key<K: Serialize + ?Sized>(key: &K) -> Result<Vec<u8>, KeyCodecError> {
    let mut out = Vec::new();
    encode_key_into(key, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `key` to `out`; see [`encode_key`] for the
/// ordering guarantee and its limits.
///
/// Appending lets callers build composite keys (`enc(a) ++ enc(b)`) in one
/// buffer. On error `out` is restored to its previous length.
pub fn encode_key_into<K: Serialize + ?Sized>(
    key: &K,
    out: &mut Vec<u8>,
) -> Result<(), KeyCodecError> {
    let start = out.len();
    let result = key.serialize(&mut KeySerializer { out: &mut *out });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Decodes a whole buffer produced by [`encode_key`]; trailing bytes are an
/// error ([`KeyCodecError::TrailingBytes`]).
///
/// Decoding is strict (marker bytes, escapes, UTF-8 and `char`s are all
/// validated), so for types whose `Deserialize` is itself strict any accepted
/// input is the canonical encoding of the returned value. Arbitrary input
/// yields an error rather than a panic; no length is read from the input, so
/// allocation stays proportional to the input length.
pub fn decode_key<K: DeserializeOwned>(bytes: &[u8]) -> Result<K, KeyCodecError> {
    let (value, used) = decode_key_prefix(bytes)?;
    match bytes.len() - used {
        0 => Ok(value),
        trailing => Err(KeyCodecError::TrailingBytes(trailing)),
    }
}

/// Decodes one value from the front of `bytes`, returning it and the number
/// of bytes it occupied.
///
/// Because encodings are prefix-free, this splits composite keys stored as
/// `enc(a) ++ enc(b)`: decode `a`, then decode `b` from `&bytes[used..]`.
pub fn decode_key_prefix<K: DeserializeOwned>(bytes: &[u8]) -> Result<(K, usize), KeyCodecError> {
    let mut de = KeyDeserializer {
        input_len: bytes.len(),
        rest: bytes,
        depth: 0,
    };
    let value = K::deserialize(&mut de)?;
    Ok((value, de.offset()))
}

struct KeySerializer<'a> {
    out: &'a mut Vec<u8>,
}

impl KeySerializer<'_> {
    fn write_escaped(&mut self, mut bytes: &[u8]) {
        while let Some(nul) = bytes.iter().position(|&b| b == 0) {
            let (before, after) = bytes.split_at(nul + 1);
            self.out.extend_from_slice(before);
            self.out.push(ESCAPED_NUL);
            bytes = after;
        }
        self.out.extend_from_slice(bytes);
        self.out.extend_from_slice(&[0x00, STRING_END]);
    }
}

impl ser::Serializer for &mut KeySerializer<'_> {
    type Ok = ();
    type Error = KeyCodecError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<(), KeyCodecError> {
        self.out.push(u8::from(v));
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), KeyCodecError> {
        self.serialize_u8(v as u8 ^ (1 << 7))
    }

    fn serialize_i16(self, v: i16) -> Result<(), KeyCodecError> {
        self.serialize_u16(v as u16 ^ (1 << 15))
    }

    fn serialize_i32(self, v: i32) -> Result<(), KeyCodecError> {
        self.serialize_u32(v as u32 ^ (1 << 31))
    }

    fn serialize_i64(self, v: i64) -> Result<(), KeyCodecError> {
        self.serialize_u64(v as u64 ^ (1 << 63))
    }

    fn serialize_i128(self, v: i128) -> Result<(), KeyCodecError> {
        self.serialize_u128(v as u128 ^ (1 << 127))
    }

    fn serialize_u8(self, v: u8) -> Result<(), KeyCodecError> {
        self.out.push(v);
        Ok(())
    }

    fn serialize_u16(self, v: u16) -> Result<(), KeyCodecError> {
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_u32(self, v: u32) -> Result<(), KeyCodecError> {
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_u64(self, v: u64) -> Result<(), KeyCodecError> {
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), KeyCodecError> {
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), KeyCodecError> {
        let bits = v.to_bits();
        // Negative floats compare in reverse of their magnitude bits.
        let key = if bits >> 31 == 1 {
            !bits
        } else {
            bits ^ (1 << 31)
        };
        self.serialize_u32(key)
    }

    fn serialize_f64(self, v: f64) -> Result<(), KeyCodecError> {
        let bits = v.to_bits();
        let key = if bits >> 63 == 1 {
            !bits
        } else {
            bits ^ (1 << 63)
        };
        self.serialize_u64(key)
    }

    fn serialize_char(self, v: char) -> Result<(), KeyCodecError> {
        self.serialize_u32(u32::from(v))
    }

    fn serialize_str(self, v: &str) -> Result<(), KeyCodecError> {
        self.write_escaped(v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), KeyCodecError> {
        self.write_escaped(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), KeyCodecError> {
        self.out.push(NONE_TAG);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), KeyCodecError> {
        self.out.push(SOME_TAG);
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), KeyCodecError> {
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), KeyCodecError> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
    ) -> Result<(), KeyCodecError> {
        self.serialize_u32(variant_index)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), KeyCodecError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<(), KeyCodecError> {
        self.out.extend_from_slice(&variant_index.to_be_bytes());
        value.serialize(self)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, KeyCodecError> {
        Ok(self)
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self, KeyCodecError> {
        Ok(self)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self, KeyCodecError> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, KeyCodecError> {
        self.out.extend_from_slice(&variant_index.to_be_bytes());
        Ok(self)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self, KeyCodecError> {
        Ok(self)
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, KeyCodecError> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, KeyCodecError> {
        self.out.extend_from_slice(&variant_index.to_be_bytes());
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut KeySerializer<'_> {
    type Ok = ();
    type Error = KeyCodecError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyCodecError> {
        self.out.push(SEQ_ELEMENT);
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), KeyCodecError> {
        self.out.push(SEQ_END);
        Ok(())
    }
}

impl ser::SerializeTuple for &mut KeySerializer<'_> {
    type Ok = ();
    type Error = KeyCodecError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyCodecError> {
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), KeyCodecError> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut KeySerializer<'_> {
    type Ok = ();
    type Error = KeyCodecError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyCodecError> {
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), KeyCodecError> {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut KeySerializer<'_> {
    type Ok = ();
    type Error = KeyCodecError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyCodecError> {
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), KeyCodecError> {
        Ok(())
    }
}

impl ser::SerializeMap for &mut KeySerializer<'_> {
    type Ok = ();
    type Error = KeyCodecError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), KeyCodecError> {
        self.out.push(SEQ_ELEMENT);
        key.serialize(&mut **self)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyCodecError> {
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), KeyCodecError> {
        self.out.push(SEQ_END);
        Ok(())
    }
}

impl ser::SerializeStruct for &mut KeySerializer<'_> {
    type Ok = ();
    type Error = KeyCodecError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _key: &'static str,
        value: &T,
    ) -> Result<(), KeyCodecError> {
        value.serialize(&mut **self)
    }

    fn skip_field(&mut self, _key: &'static str) -> Result<(), KeyCodecError> {
        Err(KeyCodecError::Unsupported(
            "conditionally skipped struct fields (skip_serializing_if)",
        ))
    }

    fn end(self) -> Result<(), KeyCodecError> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut KeySerializer<'_> {
    type Ok = ();
    type Error = KeyCodecError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _key: &'static str,
        value: &T,
    ) -> Result<(), KeyCodecError> {
        value.serialize(&mut **self)
    }

    fn skip_field(&mut self, _key: &'static str) -> Result<(), KeyCodecError> {
        Err(KeyCodecError::Unsupported(
            "conditionally skipped struct fields (skip_serializing_if)",
        ))
    }

    fn end(self) -> Result<(), KeyCodecError> {
        Ok(())
    }
}

struct KeyDeserializer<'de> {
    input_len: usize,
    rest: &'de [u8],
    depth: usize,
}

impl<'de> KeyDeserializer<'de> {
    fn offset(&self) -> usize {
        self.input_len - self.rest.len()
    }

    fn read_byte(&mut self) -> Result<u8, KeyCodecError> {
        let (&byte, rest) = self.rest.split_first().ok_or(KeyCodecError::Eof)?;
        self.rest = rest;
        Ok(byte)
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], KeyCodecError> {
        let (bytes, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(KeyCodecError::Eof)?;
        self.rest = rest;
        Ok(*bytes)
    }

    /// Reads a byte that must be one of two markers, returning whether it was
    /// `one`.
    fn read_flag(&mut self, what: &'static str, zero: u8, one: u8) -> Result<bool, KeyCodecError> {
        let offset = self.offset();
        match self.read_byte()? {
            b if b == zero => Ok(false),
            b if b == one => Ok(true),
            byte => Err(KeyCodecError::InvalidTag { what, byte, offset }),
        }
    }

    fn read_u16(&mut self) -> Result<u16, KeyCodecError> {
        self.read_array().map(u16::from_be_bytes)
    }

    fn read_u32(&mut self) -> Result<u32, KeyCodecError> {
        self.read_array().map(u32::from_be_bytes)
    }

    fn read_u64(&mut self) -> Result<u64, KeyCodecError> {
        self.read_array().map(u64::from_be_bytes)
    }

    fn read_u128(&mut self) -> Result<u128, KeyCodecError> {
        self.read_array().map(u128::from_be_bytes)
    }

    /// Reads an escaped string/byte string, borrowing from the input when it
    /// contains no escaped NULs.
    fn read_escaped(&mut self) -> Result<Cow<'de, [u8]>, KeyCodecError> {
        let mut unescaped: Option<Vec<u8>> = None;
        loop {
            let nul = self
                .rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(KeyCodecError::Eof)?;
            let (segment, tail) = self.rest.split_at(nul);
            let marker_offset = self.offset() + nul + 1;
            let (&marker, tail) = tail
                .get(1..)
                .and_then(<[u8]>::split_first)
                .ok_or(KeyCodecError::Eof)?;
            self.rest = tail;
            match marker {
                STRING_END => {
                    return Ok(match unescaped {
                        None => Cow::Borrowed(segment),
                        Some(mut buf) => {
                            buf.extend_from_slice(segment);
                            Cow::Owned(buf)
                        }
                    });
                }
                ESCAPED_NUL => {
                    let buf = unescaped.get_or_insert_with(Vec::new);
                    buf.extend_from_slice(segment);
                    buf.push(0);
                }
                byte => {
                    return Err(KeyCodecError::InvalidTag {
                        what: "string escape",
                        byte,
                        offset: marker_offset,
                    })
                }
            }
        }
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, KeyCodecError>,
    ) -> Result<T, KeyCodecError> {
        if self.depth >= MAX_DEPTH {
            return Err(KeyCodecError::DepthLimitExceeded);
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }
}

impl<'de> de::Deserializer<'de> for &mut KeyDeserializer<'de> {
    type Error = KeyCodecError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, KeyCodecError> {
        Err(KeyCodecError::Unsupported(
            "deserialize_any (the key format is not self-describing)",
        ))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(
        self,
        _visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        Err(KeyCodecError::Unsupported(
            "deserialize_ignored_any (the key format is not self-describing)",
        ))
    }

    fn deserialize_identifier<V: Visitor<'de>>(
        self,
        _visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        Err(KeyCodecError::Unsupported(
            "identifiers (structs are positional, enum variants are indices)",
        ))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_bool(self.read_flag("bool", 0, 1)?)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_i8((self.read_byte()? ^ (1 << 7)) as i8)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_i16((self.read_u16()? ^ (1 << 15)) as i16)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_i32((self.read_u32()? ^ (1 << 31)) as i32)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_i64((self.read_u64()? ^ (1 << 63)) as i64)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_i128((self.read_u128()? ^ (1 << 127)) as i128)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_u8(self.read_byte()?)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_u16(self.read_u16()?)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_u32(self.read_u32()?)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_u64(self.read_u64()?)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_u128(self.read_u128()?)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        let key = self.read_u32()?;
        let bits = if key >> 31 == 1 {
            key ^ (1 << 31)
        } else {
            !key
        };
        visitor.visit_f32(f32::from_bits(bits))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        let key = self.read_u64()?;
        let bits = if key >> 63 == 1 {
            key ^ (1 << 63)
        } else {
            !key
        };
        visitor.visit_f64(f64::from_bits(bits))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        let code = self.read_u32()?;
        visitor.visit_char(char::from_u32(code).ok_or(KeyCodecError::InvalidChar(code))?)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        match self.read_escaped()? {
            Cow::Borrowed(bytes) => visitor.visit_borrowed_str(
                std::str::from_utf8(bytes).map_err(|_| KeyCodecError::InvalidUtf8)?,
            ),
            Cow::Owned(bytes) => visitor
                .visit_string(String::from_utf8(bytes).map_err(|_| KeyCodecError::InvalidUtf8)?),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        match self.read_escaped()? {
            Cow::Borrowed(bytes) => visitor.visit_borrowed_bytes(bytes),
            Cow::Owned(bytes) => visitor.visit_byte_buf(bytes),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        if self.read_flag("option tag", NONE_TAG, SOME_TAG)? {
            self.nested(|de| visitor.visit_some(de))
        } else {
            visitor.visit_none()
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        self.nested(|de| visitor.visit_newtype_struct(de))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        self.nested(|de| {
            let mut access = MarkedSeq { de, done: false };
            let value = visitor.visit_seq(&mut access)?;
            if !access.done {
                return Err(KeyCodecError::UnreadElements("sequence"));
            }
            Ok(value)
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        self.nested(|de| {
            let mut access = FixedSeq { de, remaining: len };
            let value = visitor.visit_seq(&mut access)?;
            if access.remaining != 0 {
                return Err(KeyCodecError::UnreadElements("tuple or struct"));
            }
            Ok(value)
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyCodecError> {
        self.nested(|de| {
            let mut access = MarkedSeq { de, done: false };
            let value = visitor.visit_map(&mut access)?;
            if !access.done {
                return Err(KeyCodecError::UnreadElements("map"));
            }
            Ok(value)
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        self.nested(|de| visitor.visit_enum(de))
    }
}

/// Seq/map access driven by the per-element marker bytes, so no length is
/// read from (or trusted in) the input.
struct MarkedSeq<'a, 'de> {
    de: &'a mut KeyDeserializer<'de>,
    done: bool,
}

impl MarkedSeq<'_, '_> {
    fn has_next(&mut self) -> Result<bool, KeyCodecError> {
        if self.done {
            return Ok(false);
        }
        let more = self.de.read_flag("sequence marker", SEQ_END, SEQ_ELEMENT)?;
        self.done = !more;
        Ok(more)
    }
}

impl<'de> de::SeqAccess<'de> for MarkedSeq<'_, 'de> {
    type Error = KeyCodecError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, KeyCodecError> {
        if self.has_next()? {
            seed.deserialize(&mut *self.de).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl<'de> de::MapAccess<'de> for MarkedSeq<'_, 'de> {
    type Error = KeyCodecError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, KeyCodecError> {
        if self.has_next()? {
            seed.deserialize(&mut *self.de).map(Some)
        } else {
            Ok(None)
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, KeyCodecError> {
        seed.deserialize(&mut *self.de)
    }
}

/// Access for tuples and structs, whose length comes from the type.
struct FixedSeq<'a, 'de> {
    de: &'a mut KeyDeserializer<'de>,
    remaining: usize,
}

impl<'de> de::SeqAccess<'de> for FixedSeq<'_, 'de> {
    type Error = KeyCodecError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, KeyCodecError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.remaining)
    }
}

impl<'de> de::EnumAccess<'de> for &mut KeyDeserializer<'de> {
    type Error = KeyCodecError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), KeyCodecError> {
        let index = self.read_u32()?;
        let variant =
            seed.deserialize(IntoDeserializer::<KeyCodecError>::into_deserializer(index))?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut KeyDeserializer<'de> {
    type Error = KeyCodecError;

    fn unit_variant(self) -> Result<(), KeyCodecError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, KeyCodecError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, KeyCodecError> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use serde::{Deserialize, Serialize};

    use super::*;

    fn round_trip<T>(value: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let bytes = encode_key(value).expect("encode");
        let decoded: T = decode_key(&bytes).expect("decode");
        assert_eq!(&decoded, value, "bytes: {bytes:02x?}");
    }

    /// Asserts `values` is strictly increasing both as values and as encodings.
    fn assert_strictly_increasing<T: Serialize + Debug>(values: &[T]) {
        for pair in values.windows(2) {
            let lo = encode_key(&pair[0]).expect("encode");
            let hi = encode_key(&pair[1]).expect("encode");
            assert!(
                lo < hi,
                "{:?} ({lo:02x?}) should sort before {:?} ({hi:02x?})",
                pair[0],
                pair[1]
            );
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Newtype(String);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct TupleStruct(u8, i32, Option<String>);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        id: u64,
        name: String,
        tags: Vec<String>,
        unit: Unit,
        score: f64,
    }

    #[derive(Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Circle(f32),
        Rect(u16, u16),
        Named { name: String, sides: u8 },
    }

    #[test]
    fn round_trips_scalars() {
        round_trip(&true);
        round_trip(&false);
        round_trip(&0x7fu8);
        round_trip(&u16::MAX);
        round_trip(&0xdead_beefu32);
        round_trip(&u64::MAX);
        round_trip(&u128::MAX);
        round_trip(&i8::MIN);
        round_trip(&-12_345i16);
        round_trip(&i32::MIN);
        round_trip(&i64::MAX);
        round_trip(&i128::MIN);
        round_trip(&-1.5f32);
        round_trip(&f64::NEG_INFINITY);
        round_trip(&-0.0f64);
        round_trip(&'\u{10FFFF}');
        round_trip(&'a');
        round_trip(&());
    }

    #[test]
    fn round_trips_strings_and_bytes() {
        round_trip(&String::new());
        round_trip(&"\0".to_owned());
        round_trip(&"a\0b\0\0c\u{e9}\u{1F600}".to_owned());
        round_trip(&vec![0u8, 0xff, 1, 0]);

        struct RawBytes<'a>(&'a [u8]);
        impl Serialize for RawBytes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        let raw = [0u8, 1, 0, 0xff];
        let bytes = encode_key(&RawBytes(&raw)).expect("encode");
        assert_eq!(bytes, [0, 0xff, 1, 0, 0xff, 0xff, 0, 1]);
        // Escaped and plain-string encodings are identical, so the bytes
        // decode as a string too when valid UTF-8.
        let decoded: String =
            decode_key(&encode_key(&RawBytes(b"a\0b")).expect("encode")).expect("decode");
        assert_eq!(decoded, "a\0b");
    }

    #[test]
    fn round_trips_compound() {
        round_trip(&Some(Some(3u8)));
        round_trip(&Some(None::<u8>));
        round_trip(&None::<String>);
        round_trip(&vec![
            vec![],
            vec!["x".to_owned()],
            vec![String::new(), "\0".to_owned()],
        ]);
        round_trip(&(1u8, "two".to_owned(), -3i64, Some(4.5f64)));
        round_trip(&Unit);
        round_trip(&Newtype("inner\0".to_owned()));
        round_trip(&TupleStruct(7, -7, Some("seven".to_owned())));
        round_trip(&Record {
            id: 42,
            name: "n\0me".to_owned(),
            tags: vec!["a".to_owned(), "b".to_owned()],
            unit: Unit,
            score: -0.25,
        });
        round_trip(&vec![
            Shape::Empty,
            Shape::Circle(1.0),
            Shape::Rect(3, 4),
            Shape::Named {
                name: "hex".to_owned(),
                sides: 6,
            },
        ]);
        round_trip(&BTreeMap::from([
            (1u32, "one".to_owned()),
            (2, "two".to_owned()),
        ]));
    }

    #[test]
    fn string_order() {
        assert_strictly_increasing(&["", "\0", "\0\0", "\0a", "a", "a\0", "ab", "b", "\u{e9}"]);
    }

    #[test]
    fn integer_order() {
        assert_strictly_increasing(&[i64::MIN, -256, -1, 0, 1, 255, i64::MAX]);
        assert_strictly_increasing(&[i8::MIN, -1, 0, 1, i8::MAX]);
        assert_strictly_increasing(&[i128::MIN, -1, 0, 1, i128::MAX]);
        assert_strictly_increasing(&[0u32, 1, 255, 256, u32::MAX]);
    }

    #[test]
    fn float_order() {
        assert_strictly_increasing(&[
            f64::NEG_INFINITY,
            f64::MIN,
            -1.0,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            1.0,
            f64::MAX,
            f64::INFINITY,
        ]);
        assert_strictly_increasing(&[f32::NEG_INFINITY, -1.0f32, -0.0, 0.0, 1.0, f32::INFINITY]);
        // NaN sorts above +inf (like `total_cmp`) rather than being unorderable.
        assert!(
            encode_key(&f64::NAN).expect("encode") > encode_key(&f64::INFINITY).expect("encode")
        );
    }

    #[test]
    fn compound_order() {
        assert_strictly_increasing(&[None, Some(""), Some("a")]);
        assert_strictly_increasing(&[vec![], vec![0u8], vec![0, 0], vec![1]]);
        assert_strictly_increasing(&[("a", 9u8), ("ab", 0), ("b", 0)]);
        assert_strictly_increasing(&[
            Shape::Empty,
            Shape::Circle(-1.0),
            Shape::Circle(2.0),
            Shape::Rect(0, 9),
            Shape::Rect(1, 0),
            Shape::Named {
                name: String::new(),
                sides: 9,
            },
        ]);
    }

    #[test]
    fn decodes_composite_prefix() {
        let a = ("user\0".to_owned(), 7u32);
        let b = vec![Some(-1i16), None];
        let mut bytes = encode_key(&a).expect("encode");
        let a_len = bytes.len();
        encode_key_into(&b, &mut bytes).expect("encode");

        let (decoded_a, used) = decode_key_prefix::<(String, u32)>(&bytes).expect("decode a");
        assert_eq!((decoded_a, used), (a, a_len));
        let decoded_b: Vec<Option<i16>> = decode_key(&bytes[used..]).expect("decode b");
        assert_eq!(decoded_b, b);
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode_key(&5u16).expect("encode");
        bytes.extend_from_slice(&[1, 2]);
        assert!(matches!(
            decode_key::<u16>(&bytes),
            Err(KeyCodecError::TrailingBytes(2))
        ));
    }

    #[test]
    fn rejects_truncated_input() {
        let bytes = encode_key(&("abc", 1u64, vec![1i32])).expect("encode");
        for len in 0..bytes.len() {
            let result = decode_key::<(String, u64, Vec<i32>)>(&bytes[..len]);
            assert!(
                matches!(result, Err(KeyCodecError::Eof)),
                "len {len}: {result:?}"
            );
        }
    }

    #[test]
    fn rejects_malformed_markers() {
        assert!(matches!(
            decode_key::<bool>(&[2]),
            Err(KeyCodecError::InvalidTag {
                what: "bool",
                byte: 2,
                offset: 0
            })
        ));
        assert!(matches!(
            decode_key::<Option<u8>>(&[7, 0]),
            Err(KeyCodecError::InvalidTag {
                what: "option tag",
                ..
            })
        ));
        assert!(matches!(
            decode_key::<String>(&[b'a', 0, 2]),
            Err(KeyCodecError::InvalidTag {
                what: "string escape",
                byte: 2,
                offset: 2
            })
        ));
        assert!(matches!(
            decode_key::<String>(&[0xc3, 0, 1]),
            Err(KeyCodecError::InvalidUtf8)
        ));
        assert!(matches!(
            decode_key::<char>(&0xD800u32.to_be_bytes()),
            Err(KeyCodecError::InvalidChar(0xD800))
        ));
        assert!(matches!(
            decode_key::<Shape>(&9u32.to_be_bytes()),
            Err(KeyCodecError::Custom(_))
        ));
    }

    #[test]
    fn rejects_unsupported_shapes() {
        #[derive(Serialize)]
        struct Sparse {
            #[serde(skip_serializing_if = "Option::is_none")]
            maybe: Option<u8>,
        }
        let mut out = vec![9];
        assert!(matches!(
            encode_key_into(&Sparse { maybe: None }, &mut out),
            Err(KeyCodecError::Unsupported(_))
        ));
        assert_eq!(out, [9], "failed encode must not leave partial output");

        #[derive(Debug, Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code, reason = "only the decode failure is exercised")]
        enum Untagged {
            _A(u8),
        }
        assert!(matches!(
            decode_key::<Untagged>(&[1]),
            Err(KeyCodecError::Unsupported(_))
        ));
    }

    #[test]
    fn limits_nesting_depth() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code, reason = "only the decode failure is exercised")]
        enum Tree {
            _Leaf,
            _Node(Box<Tree>),
        }
        // Every 4-byte group is variant index 1, i.e. another level of nesting.
        let bytes = 1u32.to_be_bytes().repeat(100_000);
        assert!(matches!(
            decode_key::<Tree>(&bytes),
            Err(KeyCodecError::DepthLimitExceeded)
        ));
    }
}
