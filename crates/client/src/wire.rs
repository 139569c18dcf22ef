//! Wire helpers shared by every request: the gRPC stubs with Flotilla's message limits,
//! in-band errors turned into `Err`, and broker addresses.

use flotilla_proto::v1::{self, admin_client::AdminClient, flotilla_client::FlotillaClient};
use flotilla_types::limits;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::error::{ClientError, Result};

/// `host:port` from `host:port`, `http://host:port`, `https://host:port` or the same with
/// a final `/`. Whether the client uses TLS is its configuration's (`ClientConfig::tls`),
/// not the address's.
pub(crate) fn normalize_addr(addr: &str) -> std::result::Result<String, String> {
    let a = addr.trim();
    let a = a.strip_prefix("https://").or_else(|| a.strip_prefix("http://")).unwrap_or(a).trim_end_matches('/');
    let uri: tonic::transport::Uri =
        format!("http://{a}").parse().map_err(|e| format!("{addr:?} is not a host:port address: {e}"))?;
    match (uri.host(), uri.port_u16(), uri.path()) {
        (Some(h), Some(_), "/" | "") if !h.is_empty() => Ok(a.to_string()),
        (_, None, _) => Err(format!("{addr:?} has no port; expected host:port")),
        _ => Err(format!("{addr:?} is not a host:port address")),
    }
}

/// A connection to one broker and what every request on it carries: the
/// `authorization` header of the client's credentials, if it has any.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) channel: Channel,
    pub(crate) auth: Auth,
}

/// Adds the `authorization` header to every request.
#[derive(Clone, Default)]
pub(crate) struct Auth(Option<AsciiMetadataValue>);

impl Auth {
    pub(crate) fn new(credentials: Option<&crate::config::Credentials>) -> Auth {
        // "Basic " and base64 are visible ASCII: always a valid header value.
        Auth(credentials.map(|c| c.header().parse().expect("base64 is a valid header value")))
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub(crate) fn flotilla(c: Conn) -> FlotillaClient<InterceptedService<Channel, Auth>> {
    FlotillaClient::with_interceptor(c.channel, c.auth)
        .max_decoding_message_size(limits::FETCH_RESPONSE_BYTES_MAX)
        .max_encoding_message_size(limits::REQUEST_BYTES_MAX)
}

pub(crate) fn admin(c: Conn) -> AdminClient<InterceptedService<Channel, Auth>> {
    AdminClient::with_interceptor(c.channel, c.auth)
        .max_decoding_message_size(limits::REQUEST_BYTES_MAX)
        .max_encoding_message_size(limits::REQUEST_BYTES_MAX)
}

/// Turns an in-band error into `Err`.
pub(crate) fn answered(addr: &str, error: &Option<v1::Error>) -> Result<()> {
    flotilla_proto::check(error).map_err(|e| ClientError::server(addr, e))
}

pub(crate) fn rpc_err(addr: &str) -> impl Fn(tonic::Status) -> ClientError + '_ {
    move |s| ClientError::from_status(addr, &s)
}

pub(crate) fn refused(e: v1::Error) -> ClientError {
    ClientError::refused(e.error_code(), e.message)
}

/// A response that carries an in-band error (`error`), checked by [`answered`].
pub(crate) trait InBand {
    fn in_band_error(&self) -> &Option<v1::Error>;
}

macro_rules! in_band {
    ($($t:ty),* $(,)?) => {
        $(impl InBand for $t {
            fn in_band_error(&self) -> &Option<v1::Error> {
                &self.error
            }
        })*
    };
}

in_band!(
    v1::GroupHeartbeatResponse,
    v1::CommitOffsetsResponse,
    v1::ListGroupsResponse,
    v1::DescribeGroupResponse,
    v1::ShareHeartbeatResponse,
    v1::ShareAcquireResponse,
    v1::ShareAckResponse,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(normalize_addr("127.0.0.1:7070").unwrap(), "127.0.0.1:7070");
        assert_eq!(normalize_addr(" http://localhost:7070/ ").unwrap(), "localhost:7070");
        assert_eq!(normalize_addr("[::1]:7070").unwrap(), "[::1]:7070");
        assert!(normalize_addr("localhost").unwrap_err().contains("no port"));
        assert_eq!(normalize_addr("https://h:1/").unwrap(), "h:1", "TLS is the configuration's, not the address's");
        assert!(normalize_addr("h:1/path").is_err());
        assert!(normalize_addr("").is_err());
    }
}
