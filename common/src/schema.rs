//! The table schema and typed rows. A row that reached a shard server has every column of the
//! schema with its declared type: no coercion, no extra fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::body::kind;
use crate::names::ColumnName;

/// Longest accepted `String` value, in bytes, unless configured otherwise.
pub const DEFAULT_MAX_STRING_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    /// A signed 64-bit integer.
    Number,
    /// UTF-8 text.
    String,
}

/// The schema as sent by clients; [`Schema::parse`] validates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSpec {
    pub columns: Vec<String>,
    pub dtypes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub columns: Vec<ColumnName>,
    pub dtypes: Vec<Dtype>,
}

/// One typed cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Text(String),
}

/// A row in schema column order; `row[0]` is the shard key.
pub type Row = Vec<Value>;

/// The shard key of a row that passed [`Schema::parse_row`] (whose first column is a Number).
pub fn key_of(row: &Row) -> i64 {
    match row.first() {
        Some(Value::Int(k)) => *k,
        _ => unreachable!("a parsed row starts with its Number key"),
    }
}

impl Schema {
    pub fn parse(spec: &SchemaSpec) -> Result<Schema, String> {
        if spec.columns.is_empty() {
            return Err("schema.columns must name at least the key column".into());
        }
        if spec.columns.len() != spec.dtypes.len() {
            return Err(format!(
                "schema.columns has {} entries but schema.dtypes has {}",
                spec.columns.len(),
                spec.dtypes.len()
            ));
        }
        if spec.columns.len() > 64 {
            return Err("schema may have at most 64 columns".into());
        }
        let mut columns = Vec::with_capacity(spec.columns.len());
        for c in &spec.columns {
            let name = ColumnName::parse(c).map_err(|e| format!("schema.columns: {e}"))?;
            if columns
                .iter()
                .any(|o: &ColumnName| o.as_str().eq_ignore_ascii_case(c))
            {
                return Err(format!("schema.columns: duplicate column {c:?}"));
            }
            columns.push(name);
        }
        let mut dtypes = Vec::with_capacity(spec.dtypes.len());
        for d in &spec.dtypes {
            dtypes.push(match d.as_str() {
                "Number" => Dtype::Number,
                "String" => Dtype::String,
                other => {
                    return Err(format!(
                        "schema.dtypes: unknown type {other:?}; expected \"Number\" or \"String\""
                    ))
                }
            });
        }
        if dtypes[0] != Dtype::Number {
            return Err(format!(
                "schema.dtypes: the first column {:?} is the shard key and must be a Number",
                spec.columns[0]
            ));
        }
        Ok(Schema { columns, dtypes })
    }

    /// The schema as a client writes it (what `/config` carries to a shard server).
    pub fn spec(&self) -> SchemaSpec {
        SchemaSpec {
            columns: self.columns.iter().map(|c| c.as_str().to_owned()).collect(),
            dtypes: self
                .dtypes
                .iter()
                .map(|d| match d {
                    Dtype::Number => "Number".to_owned(),
                    Dtype::String => "String".to_owned(),
                })
                .collect(),
        }
    }

    /// The shard key's column name (the first column).
    pub fn key(&self) -> &str {
        self.columns[0].as_str()
    }

    /// Checks a JSON object against the schema: every column present with its declared type,
    /// nothing else.
    pub fn parse_row(&self, v: &Json, max_string_bytes: usize) -> Result<Row, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("a row must be a JSON object, got {}", kind(v)))?;
        for k in obj.keys() {
            if !self.columns.iter().any(|c| c.as_str() == k) {
                return Err(format!("unknown column {k:?}"));
            }
        }
        let mut row = Vec::with_capacity(self.columns.len());
        for (c, d) in self.columns.iter().zip(&self.dtypes) {
            let cell = obj
                .get(c.as_str())
                .ok_or_else(|| format!("missing column {:?}", c.as_str()))?;
            row.push(parse_cell(c.as_str(), *d, cell, max_string_bytes)?);
        }
        Ok(row)
    }

    pub fn row_to_json(&self, row: &Row) -> Map<String, Json> {
        self.columns
            .iter()
            .zip(row)
            .map(|(c, v)| {
                let j = match v {
                    Value::Int(i) => Json::from(*i),
                    Value::Text(s) => Json::from(s.as_str()),
                };
                (c.as_str().to_owned(), j)
            })
            .collect()
    }
}

/// Reads a `Number` value: a JSON integer within the signed 64-bit range.
pub fn parse_number(field: &str, v: &Json) -> Result<i64, String> {
    match v {
        Json::Number(n) => n.as_i64().ok_or_else(|| {
            format!("{field:?} must be an integer in the signed 64-bit range, got {n}")
        }),
        other => Err(format!(
            "{field:?} must be a Number (a JSON integer), got {}",
            kind(other)
        )),
    }
}

fn parse_cell(col: &str, d: Dtype, v: &Json, max_string_bytes: usize) -> Result<Value, String> {
    match d {
        Dtype::Number => parse_number(col, v).map(Value::Int),
        Dtype::String => match v {
            Json::String(s) if s.len() <= max_string_bytes => Ok(Value::Text(s.clone())),
            Json::String(s) => Err(format!(
                "{col:?} is {} bytes long; the limit is {max_string_bytes}",
                s.len()
            )),
            other => Err(format!("{col:?} must be a String, got {}", kind(other))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stud() -> Schema {
        Schema::parse(&SchemaSpec {
            columns: vec!["Stud_id".into(), "Stud_name".into(), "Stud_marks".into()],
            dtypes: vec!["Number".into(), "String".into(), "Number".into()],
        })
        .unwrap()
    }

    #[test]
    fn schema_validation() {
        let bad = |c: &[&str], d: &[&str]| {
            Schema::parse(&SchemaSpec {
                columns: c.iter().map(|s| s.to_string()).collect(),
                dtypes: d.iter().map(|s| s.to_string()).collect(),
            })
            .unwrap_err()
        };
        assert!(bad(&["a", "b"], &["Number"]).contains("2 entries"));
        assert!(bad(&["a", "A"], &["Number", "Number"]).contains("duplicate"));
        assert!(bad(&["a"], &["String"]).contains("must be a Number"));
        assert!(bad(&["a"], &["Float"]).contains("unknown type"));
        assert!(bad(&["a;drop"], &["Number"]).contains("column name"));
        assert!(bad(&[], &[]).contains("at least"));
    }

    #[test]
    fn rows_are_typed_strictly() {
        let s = stud();
        let row = s
            .parse_row(
                &json!({"Stud_id": 1, "Stud_name": "A", "Stud_marks": 5}),
                100,
            )
            .unwrap();
        assert_eq!(row[0], Value::Int(1));
        assert_eq!(
            json!(s.row_to_json(&row)),
            json!({"Stud_id": 1, "Stud_name": "A", "Stud_marks": 5})
        );
        let err = |v: Json| s.parse_row(&v, 100).unwrap_err();
        assert!(
            err(json!({"Stud_id": "1", "Stud_name": "A", "Stud_marks": 5})).contains("Stud_id")
        );
        assert!(err(json!({"Stud_id": 1.5, "Stud_name": "A", "Stud_marks": 5})).contains("64-bit"));
        assert!(err(
            json!({"Stud_id": 18446744073709551615u64, "Stud_name": "A", "Stud_marks": 5})
        )
        .contains("64-bit"));
        assert!(err(json!({"Stud_id": 1, "Stud_name": 3, "Stud_marks": 5})).contains("String"));
        assert!(err(json!({"Stud_id": 1, "Stud_marks": 5})).contains("missing column"));
        assert!(
            err(json!({"Stud_id": 1, "Stud_name": "A", "Stud_marks": 5, "x": 1}))
                .contains("unknown column")
        );
        assert!(
            err(json!({"Stud_id": 1, "Stud_name": "A".repeat(101), "Stud_marks": 5}))
                .contains("limit")
        );
        assert!(err(json!([1, 2])).contains("object"));
    }
}
