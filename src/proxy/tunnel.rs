//! Upgraded connections (WebSocket and any other `Upgrade`): a byte tunnel between the
//! client and the backend, counted against its colour and closed at its drain deadline.

use hyper_util::rt::TokioIo;

use crate::drain::InFlight;

/// Joins the client's and the backend's upgraded connections into a byte tunnel that
/// is counted against the colour and closed at that colour's drain deadline.
pub(super) fn spawn_tunnel(
    in_flight: &InFlight,
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
) {
    let tunnel = in_flight.tracker().open_tunnel(in_flight.color());
    let address = in_flight.backend().address.clone();
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(backend = %address, error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                if let Err(e) = copied {
                    tracing::debug!(backend = %address, error = %e, "tunnel ended with an error");
                }
            }
            () = tunnel.cancel.cancelled() => {
                tunnel.closed_by_drain();
                tracing::debug!(backend = %address, "tunnel closed at the drain deadline");
            }
        }
        drop(tunnel);
    });
}
