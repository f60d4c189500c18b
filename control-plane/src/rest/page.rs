//! Paging of every list route: `?limit=N` (1 to [`MAX_PAGE`], default
//! [`DEFAULT_PAGE`]) and `?cursor=C`, where `C` comes from the previous
//! page. The body is a JSON array; when there is more, a `Link` header
//! (RFC 8288) gives the next page's URL with `rel="next"`, and the
//! `X-Next-Cursor` header its cursor.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::error::ApiError;

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_PAGE: u32 = 50;
/// Most items per page.
pub const MAX_PAGE: u32 = 200;

/// Largest cursor (and id) accepted: 2^53 - 1, the largest integer every
/// JSON reader holds exactly. Ids are handed out from 1 upwards and never
/// come near it; a larger cursor is not one the server gave.
pub const MAX_CURSOR: u64 = (1 << 53) - 1;

/// The header carrying the next page's cursor.
pub const NEXT_CURSOR: HeaderName = HeaderName::from_static("x-next-cursor");

/// Which page of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 200. Default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Where the page starts: the cursor from the previous page's
    /// `X-Next-Cursor` header (or its `Link: rel="next"` URL). Default: the first page.
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub cursor: Option<u64>,
}

impl PageQuery {
    /// The page size, refused with 400 outside 1..=[`MAX_PAGE`].
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.unwrap_or(DEFAULT_PAGE) {
            n @ 1..=MAX_PAGE => Ok(n as usize),
            n => Err(ApiError::bad_request(format!(
                "limit={n} is out of range: a page holds 1 to {MAX_PAGE} items"
            ))
            .suggest("page through the list with `cursor`, from the X-Next-Cursor header")),
        }
    }

    /// The cursor, refused with 400 above [`MAX_CURSOR`].
    pub fn cursor(&self) -> Result<Option<u64>, ApiError> {
        check_cursor("cursor", self.cursor)
    }
}

/// `value` of the query parameter `name`, refused with 400 above [`MAX_CURSOR`].
pub fn check_cursor(name: &str, value: Option<u64>) -> Result<Option<u64>, ApiError> {
    match value {
        Some(c) if c > MAX_CURSOR => Err(ApiError::bad_request(format!(
            "{name}={c} is out of range: cursors are at most {MAX_CURSOR}"
        ))
        .suggest("pass the cursor from the previous page as it was given")),
        c => Ok(c),
    }
}

/// One page of a list, answered as a JSON array with paging headers.
#[derive(Debug)]
pub struct Page<T> {
    items: Vec<T>,
    next: Option<(u64, String)>,
}

impl<T> Page<T> {
    /// Pages `items` (fetched with one more than `limit`, to know whether
    /// there is a next page) of the list at `path`; `cursor_of` gives the
    /// cursor that continues after an item.
    pub fn new(mut items: Vec<T>, limit: usize, path: &str, cursor_of: impl Fn(&T) -> u64) -> Self {
        let next = if items.len() > limit {
            items.truncate(limit);
            items
                .last()
                .map(cursor_of)
                .map(|c| (c, format!("<{path}?limit={limit}&cursor={c}>; rel=\"next\"")))
        } else {
            None
        };
        Self { items, next }
    }
}

impl<T: Serialize> IntoResponse for Page<T> {
    fn into_response(self) -> Response {
        let mut response = Json(self.items).into_response();
        if let Some((cursor, link)) = self.next {
            let headers = response.headers_mut();
            headers.insert(NEXT_CURSOR, HeaderValue::from(cursor));
            if let Ok(link) = HeaderValue::from_str(&link) {
                headers.insert(header::LINK, link);
            }
        }
        response
    }
}
