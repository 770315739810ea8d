//! RPC methods that the application registers and clients call with the `rpc` command.

use async_trait::async_trait;
use hubbub_protocol::{Json, ProtocolError};
use std::collections::HashMap;
use std::sync::Arc;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub client: String,
}

#[async_trait]
pub trait RpcHandler: Send + Sync + 'static {
    async fn call(&self, caller: &Caller, data: Option<Json>) -> Result<Option<Json>, ProtocolError>;
}

/// Method name → handler. Built before the node starts; read-only afterwards.
#[derive(Default, Clone)]
pub struct RpcRegistry {
    methods: HashMap<String, Arc<dyn RpcHandler>>,
}

impl RpcRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, method: &str, handler: impl RpcHandler) {
        self.methods.insert(method.to_owned(), Arc::new(handler));
    }

    pub fn get(&self, method: &str) -> Option<&Arc<dyn RpcHandler>> {
        self.methods.get(method)
    }
}

/// `echo`: answers with the data it was given. Useful to check a connection end to end.
pub struct Echo;

#[async_trait]
impl RpcHandler for Echo {
    async fn call(&self, _caller: &Caller, data: Option<Json>) -> Result<Option<Json>, ProtocolError> {
        Ok(data)
    }
}
