//! YAML to JSON with a bound on what aliases expand to. serde_yaml limits alias jumps to 100
//! times the document's events, but each jump replays its whole anchor: a 160 KiB body of one
//! long string referenced 32k times held 2 GiB. Upstream's YAML decoder refuses such documents
//! ("excessive aliasing"); here every decoded node is charged (about) the memory it takes,
//! against a budget set by the body's size.

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Memory charged per node, and per object entry on top of its value.
const NODE: usize = size_of::<Value>();
const ENTRY: usize = size_of::<String>() + 2 * size_of::<usize>();

/// Decodes one YAML document into JSON, refusing it once its nodes would take more than
/// `budget` bytes.
pub fn from_slice(body: &[u8], budget: usize) -> Result<Value, serde_yaml::Error> {
    let left = Cell::new(budget);
    Budgeted(&left).deserialize(serde_yaml::Deserializer::from_slice(body))
}

#[derive(Clone, Copy)]
struct Budgeted<'a>(&'a Cell<usize>);

impl Budgeted<'_> {
    fn spend<E: de::Error>(self, bytes: usize) -> Result<(), E> {
        match self.0.get().checked_sub(bytes) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(E::custom("document contains excessive aliasing")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// serde_json's own `Value` visitor, with the charge added.
impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend(NODE)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend(NODE)?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend(NODE)?;
        Ok(Value::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        self.spend(NODE)?;
        Value::deserialize(de::value::I128Deserializer::new(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        self.spend(NODE)?;
        Value::deserialize(de::value::U128Deserializer::new(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend(NODE)?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend(NODE + v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.spend(NODE + v.len())?;
        Ok(Value::String(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.spend(NODE)?;
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.spend(NODE)?;
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend(NODE)?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend(NODE)?;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            self.spend(ENTRY + k.len())?;
            let v = map.next_value_seed(self)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}
