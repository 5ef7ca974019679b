//! The server's HTTP API (docs/internal-api.md): one module per endpoint family. Every body
//! is a type of `shardline::internal`, decoded with `ApiJson` (a 400 naming the field).

mod admin;
mod read;
mod restore;
pub mod snapshot;
mod write;

use std::sync::Arc;

use axum::routing::{delete, get, post, put};
use axum::Router;
use shardline::internal::{Keyed, MAX_BATCH_REQUESTS};
use shardline::schema::Schema;
use shardline::ApiError;

use crate::server::Server;

pub fn router(server: Arc<Server>, body_limit: usize) -> Router {
    Router::new()
        .route("/heartbeat", get(admin::heartbeat))
        .route("/config", post(admin::config))
        .route("/adopt_log", post(admin::adopt_log))
        .route("/copy", get(admin::copy).post(admin::copy))
        .route(
            "/snapshot/{shard}",
            get(snapshot::snapshot).put(restore::put_snapshot),
        )
        .route("/read_all", get(admin::read_all).post(admin::read_all))
        .route("/read", get(read::read).post(read::read))
        .route("/read_batch", post(read::read_batch))
        .route("/write", post(write::write))
        .route("/write_batch", post(write::write_batch))
        .route("/update", put(write::update))
        .route("/del", delete(write::delete))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(server)
}

fn configured_schema(server: &Server) -> Result<Arc<Schema>, ApiError> {
    server.schema().ok_or_else(|| {
        ApiError::Unavailable(format!("server {} is not configured yet", server.name))
    })
}

/// Checks the number of requests in a batch's `field` (`writes`, `reads`): at least one, at
/// most [`MAX_BATCH_REQUESTS`].
fn check_batch_len(n: usize, field: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::BadRequest(format!("field `{field}` is empty")));
    }
    if n > MAX_BATCH_REQUESTS {
        return Err(ApiError::BadRequest(format!(
            "field `{field}` has {n} {field}; at most {MAX_BATCH_REQUESTS} are accepted"
        )));
    }
    Ok(())
}

/// Checks that a keyed body names its key after the schema's key column, and carries `data`
/// exactly when the endpoint takes it.
fn check_keyed<T>(body: &Keyed<T>, schema: &Schema, takes_data: bool) -> Result<(), ApiError> {
    let key = schema.key();
    if body.key.as_str() != key {
        return Err(ApiError::BadRequest(format!(
            "unknown field `{}`: the key field is named after the schema's key column `{key}`",
            body.key
        )));
    }
    match (takes_data, body.data.is_some()) {
        (true, false) => Err(ApiError::BadRequest("missing field `data`".into())),
        (false, true) => Err(ApiError::BadRequest(format!(
            "unknown field `data`; expected shard, {key}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use shardline::internal::{DeleteRequest, ReadRequest, UpdateRequest};
    use shardline::schema::SchemaSpec;

    use super::*;

    fn schema() -> Schema {
        Schema::parse(&SchemaSpec {
            columns: vec!["Stud_id".into(), "Stud_name".into()],
            dtypes: vec!["Number".into(), "String".into()],
        })
        .unwrap()
    }

    #[test]
    fn keyed_bodies_must_name_the_schema_key() {
        let del: DeleteRequest =
            serde_json::from_value(json!({"shard": "sh1", "Other": 3})).unwrap();
        let e = check_keyed(&del, &schema(), false).unwrap_err();
        assert_eq!(e.code(), shardline::ErrorCode::BadRequest);
        assert!(e.message().contains("`Other`") && e.message().contains("`Stud_id`"));

        let del: DeleteRequest =
            serde_json::from_value(json!({"shard": "sh1", "Stud_id": 3, "data": {}})).unwrap();
        let e = check_keyed(&del, &schema(), false).unwrap_err();
        assert!(
            e.message().contains("unknown field `data`"),
            "{}",
            e.message()
        );

        let upd: UpdateRequest =
            serde_json::from_value(json!({"shard": "sh1", "Stud_id": 3})).unwrap();
        let e = check_keyed(&upd, &schema(), true).unwrap_err();
        assert!(
            e.message().contains("missing field `data`"),
            "{}",
            e.message()
        );

        let read: ReadRequest =
            serde_json::from_value(json!({"shard": "sh1", "Stud_id": {"low": 1, "high": 2}}))
                .unwrap();
        check_keyed(&read, &schema(), false).unwrap();
    }
}
