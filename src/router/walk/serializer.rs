//! `serde::Serializer` for the walker: every compound value is walked, primitives are
//! kept only when a field handler asked for one (`Capture`).

use serde::ser::{self, Serialize};

use super::{Capture, Fields, Stop, Walker};

macro_rules! int_methods {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<(), Stop> {
            if self.capture == Capture::Int {
                self.int = i64::try_from(v).ok();
                self.capture = Capture::Nothing;
            }
            Ok(())
        }
    )*};
}

/// Every compound kind is walked element by element.
macro_rules! walk_elements {
    ($($tr:ident :: $method:ident),*) => {$(
        impl ser::$tr for &mut Walker {
            type Ok = ();
            type Error = Stop;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Stop> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), Stop> {
                Ok(())
            }
        }
    )*};
}

walk_elements!(SerializeSeq::serialize_element, SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field, SerializeTupleVariant::serialize_field);

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, _: &T) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Stop> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Walker {
    type Ok = ();
    type Error = Stop;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, _: &'static str, v: &T) -> Result<(), Stop> {
        v.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

impl Walker {
    /// Notes a node type name; stops the walk when only the first one is wanted.
    fn named(&mut self, name: &'static str) -> Result<(), Stop> {
        if self.first.is_none() {
            self.first = Some(name);
            if self.stop_at_first {
                return Err(Stop);
            }
        }
        let dml = match name {
            "InsertStmt" => "INSERT",
            "UpdateStmt" => "UPDATE",
            "DeleteStmt" => "DELETE",
            "MergeStmt" => "MERGE",
            _ => return Ok(()),
        };
        self.found.dml = self.found.dml.or(Some(dml));
        Ok(())
    }
}

impl<'a> ser::Serializer for &'a mut Walker {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Self;

    int_methods!(serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64);

    fn serialize_bool(self, _: bool) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Stop> {
        if self.capture == Capture::Str {
            self.text = Some(v.to_string());
            self.capture = Capture::Nothing;
        }
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Stop> {
        if self.capture == Capture::IsSome {
            self.is_some = Some(false);
            self.capture = Capture::Nothing;
        }
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Stop> {
        if self.capture == Capture::IsSome {
            self.is_some = Some(true);
            self.capture = Capture::Nothing;
        }
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        self.named(variant)?;
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Fields<'a>, Stop> {
        self.named(name)?;
        Ok(Fields { w: self, name, schema: None, relname: None })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, Stop> {
        self.named(variant)?;
        Ok(self)
    }
}
