//! `atomix.primitive.PrimitiveService`: the lifecycle calls of the upstream
//! client. The primitive is named by `header.primitive_id`, whose type
//! (`LeaderLatch` or `Election`) selects the kind.

use baton_state::{CommandError, Operation, PrimitiveKind};
use tonic::{Request, Response, Status};

use super::Context;
use crate::convert::{deadline, unary_header, Addressed, Caller};
use crate::error::ApiError;
use crate::proto::atomix::primitive::primitive_service_server::PrimitiveService;
use crate::proto::atomix::primitive::{
    CloseRequest, CloseResponse, CreateRequest, CreateResponse, DeleteRequest, DeleteResponse,
};

/// Serves the primitive lifecycle API.
pub struct PrimitiveApi {
    context: Context,
}

impl PrimitiveApi {
    /// A lifecycle service over `context`.
    pub fn new(context: Context) -> Self {
        PrimitiveApi { context }
    }

    /// The caller and the primitive its header names; the type must be one
    /// of ours, since it is the only thing that tells the kind here.
    fn caller<T: Addressed>(&self, request: &Request<T>) -> Result<Caller, ApiError> {
        let given = request
            .get_ref()
            .header()
            .and_then(|h| h.primitive_id.as_ref())
            .map(|id| id.r#type.as_str())
            .unwrap_or_default();
        let kind = [PrimitiveKind::Latch, PrimitiveKind::Election]
            .into_iter()
            .find(|kind| kind.type_name() == given)
            .ok_or_else(|| CommandError::WrongPrimitiveType {
                given: baton_state::shown(given),
                expected: "LeaderLatch or Election".to_owned(),
            })?;
        self.context.caller(request, kind)
    }
}

#[tonic::async_trait]
impl PrimitiveService for PrimitiveApi {
    /// Nothing to create: a primitive exists from its first member on. The
    /// call checks the id and, for a caller without a client_id, names its
    /// connection.
    async fn create(
        &self,
        request: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        self.caller(&request)?;
        Ok(Response::new(CreateResponse {
            header: unary_header(),
        }))
    }

    /// Withdraws the caller from the primitive (its session stays open).
    async fn close(
        &self,
        request: Request<CloseRequest>,
    ) -> Result<Response<CloseResponse>, Status> {
        let caller = self.caller(&request)?;
        let name = caller.key.name.clone();
        let operation = match caller.key.kind {
            PrimitiveKind::Latch => Operation::Leave { latch: name },
            PrimitiveKind::Election => Operation::Withdraw { election: name },
        };
        self.context
            .operate(&caller, operation, deadline(&request))
            .await?;
        Ok(Response::new(CloseResponse {
            header: unary_header(),
        }))
    }

    /// Removes the primitive; NOT_FOUND if it does not exist.
    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let caller = self.caller(&request)?;
        let operation = Operation::Delete {
            key: caller.key.clone(),
        };
        self.context
            .operate(&caller, operation, deadline(&request))
            .await?;
        Ok(Response::new(DeleteResponse {
            header: unary_header(),
        }))
    }
}
