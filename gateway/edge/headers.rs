//! Header edits over Pingora's request and response heads and over plain `http` header maps, so that a
//! route's rewrites and the gateway's own headers are written the same way on every kind of head.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Request heads, response heads and plain header maps take the same edits.
pub trait HeaderEdits {
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()>;
    fn add(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()>;
    /// Set a header named by a static string: Pingora's heads store such a name as it is, where a
    /// `HeaderName` would be copied into their spelling map first.
    fn set_static(&mut self, name: &'static str, value: HeaderValue) -> pingora::Result<()>;
}

macro_rules! header_edits_for_pingora_head {
    ($head:ty) => {
        impl HeaderEdits for $head {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn set(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()> {
                self.insert_header(name.clone(), value.clone())
            }
            fn add(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()> {
                self.append_header(name.clone(), value.clone()).map(|_| ())
            }
            fn set_static(
                &mut self,
                name: &'static str,
                value: HeaderValue,
            ) -> pingora::Result<()> {
                self.insert_header(name, value)
            }
        }
    };
}

header_edits_for_pingora_head!(pingora::http::RequestHeader);
header_edits_for_pingora_head!(pingora::http::ResponseHeader);

impl HeaderEdits for HeaderMap {
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()> {
        self.insert(name.clone(), value.clone());
        Ok(())
    }
    fn add(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora::Result<()> {
        self.append(name.clone(), value.clone());
        Ok(())
    }
    fn set_static(&mut self, name: &'static str, value: HeaderValue) -> pingora::Result<()> {
        self.insert(HeaderName::from_static(name), value);
        Ok(())
    }
}
