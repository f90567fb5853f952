//! `atomix.primitive.PrimitiveService` for both kinds: Close (leave the
//! primitive, keep the session) and Delete.

use crate::client::Client;
use crate::error::Result;
use crate::proto::atomix::primitive::primitive_service_client::PrimitiveServiceClient;
use crate::proto::atomix::primitive::{CloseRequest, DeleteRequest};
use crate::transport::{applied, with_deadline};
use crate::view::Kind;

/// Withdraws `client` from `name` (a latch participant leaves, a candidate
/// withdraws) as request `request_id`; its session stays open.
pub(crate) async fn close(client: &Client, kind: Kind, name: &str, request_id: u64) -> Result<()> {
    let header = client.inner.header(kind, name, request_id);
    let answer = client
        .call(|channel, left| {
            let request = CloseRequest {
                header: header.clone(),
            };
            async move {
                PrimitiveServiceClient::new(channel)
                    .close(with_deadline(request, left))
                    .await
            }
        })
        .await;
    applied(answer)
}

/// Removes `name`; NOT_FOUND if it does not exist.
pub(crate) async fn delete(client: &Client, kind: Kind, name: &str) -> Result<()> {
    let header = client
        .inner
        .header(kind, name, client.inner.write_id().await?);
    let answer = client
        .call(|channel, left| {
            let request = DeleteRequest {
                header: header.clone(),
            };
            async move {
                PrimitiveServiceClient::new(channel)
                    .delete(with_deadline(request, left))
                    .await
            }
        })
        .await;
    applied(answer)
}
