//! TEMPORARY until the storage split lands.
use crate::store::{Store, StoreError};
impl Store {
    /// shim
    pub fn open_spec(spec: &str, dir: &std::path::Path) -> Result<Store, StoreError> {
        if spec == "embedded" {
            Store::open(dir)
        } else {
            Err(StoreError::Db("no postgres yet".into()))
        }
    }
    /// shim
    pub fn backend_name(&self) -> &'static str {
        "sqlite"
    }
}
