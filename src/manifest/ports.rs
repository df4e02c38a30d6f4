//! Range checks of the port numbers in a DaemonSet's containers and probes: a port
//! outside 1..=65535 would only be refused by the API server at apply time, after
//! the commit was accepted; here it is a finding with its line.

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::findings::INVALID_OBJECT;
use super::lines::Path;
use super::{Doc, Report};

const PORTS: std::ops::RangeInclusive<i32> = 1..=65535;

/// Checks every port of `container` (at `path`).
pub(crate) fn check_container_ports(
    doc: &Doc<'_>,
    container: &Container,
    path: &Path,
    report: &mut Report<'_>,
    object: Option<&str>,
) {
    let mut bad = |at: Path, what: &str, port: i32| {
        report.add(
            INVALID_OBJECT,
            doc.location(&at),
            object,
            format!(
                "container {:?} has {what} {port}, outside 1 to 65535: use a valid port number",
                container.name
            ),
        );
    };
    for (i, port) in container.ports.iter().flatten().enumerate() {
        let here = path.key("ports").index(i);
        if !PORTS.contains(&port.container_port) {
            bad(
                here.key("containerPort"),
                "containerPort",
                port.container_port,
            );
        }
        // 0 means "no host port" to the API server.
        if let Some(host) = port.host_port.filter(|p| *p != 0 && !PORTS.contains(p)) {
            bad(here.key("hostPort"), "hostPort", host);
        }
    }
    for (field, probe) in [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
        ("startupProbe", &container.startup_probe),
    ] {
        let Some(probe) = probe else {
            continue;
        };
        for (at, port) in probe_ports(probe) {
            if !PORTS.contains(&port) {
                bad(path.key(field).join(at), &format!("{field} port"), port);
            }
        }
    }
}

/// Numeric ports of a probe with the relative path of each; named ports are the
/// API server's business.
fn probe_ports(probe: &Probe) -> Vec<(&'static str, i32)> {
    let mut out = Vec::new();
    if let Some(IntOrString::Int(p)) = probe.http_get.as_ref().map(|h| &h.port) {
        out.push(("httpGet.port", *p));
    }
    if let Some(IntOrString::Int(p)) = probe.tcp_socket.as_ref().map(|t| &t.port) {
        out.push(("tcpSocket.port", *p));
    }
    if let Some(g) = &probe.grpc {
        out.push(("grpc.port", g.port));
    }
    out
}
