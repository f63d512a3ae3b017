//! Wire format: each network message, encoded by the generated code, against protobuf
//! encodings computed by hand from the fact sheet's field numbers (so a renumbering fails).

use agent_client::protocols::agent::*;
use agent_client::protocols::health::*;
use agent_client::protocols::types::*;
use protobuf::{Enum, EnumOrUnknown, Message, MessageField};

/// Tag byte: field number << 3 | wire type (0 varint, 2 length-delimited).
fn tag(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

fn string_field(field: u8, s: &str) -> Vec<u8> {
    let mut v = vec![tag(field, 2), s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn nested(field: u8, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![tag(field, 2), inner.len() as u8];
    v.extend_from_slice(inner);
    v
}

fn ip6() -> IPAddress {
    IPAddress {
        family: EnumOrUnknown::new(IPFamily::v6),
        address: "fd00::5".into(),
        mask: "64".into(),
        ..Default::default()
    }
}

fn ip6_bytes() -> Vec<u8> {
    [vec![tag(1, 0), 1], string_field(2, "fd00::5"), string_field(3, "64")].concat()
}

#[test]
fn ip_family_values() {
    assert_eq!(IPFamily::v4.value(), 0);
    assert_eq!(IPFamily::v6.value(), 1);
}

#[test]
fn interface_encodes_fields_1_to_9() {
    let i = Interface {
        device: "eth0".into(),
        name: "eth-test".into(),
        IPAddresses: vec![ip6()],
        mtu: 1500,
        hwAddr: "02:42:20:6f:a3:69".into(),
        devicePath: "02/01".into(),
        type_: "veth".into(),
        raw_flags: 3,
        Queues: 5,
        ..Default::default()
    };
    let want = [
        string_field(1, "eth0"),
        string_field(2, "eth-test"),
        nested(3, &ip6_bytes()),
        vec![tag(4, 0), 0xdc, 0x0b], // 1500 as a varint
        string_field(5, "02:42:20:6f:a3:69"),
        string_field(6, "02/01"),
        string_field(7, "veth"),
        vec![tag(8, 0), 3],
        vec![tag(9, 0), 5],
    ]
    .concat();
    assert_eq!(i.write_to_bytes().unwrap(), want);
    assert_eq!(Interface::parse_from_bytes(&want).unwrap(), i);
    let req = UpdateInterfaceRequest { interface: MessageField::some(i), ..Default::default() };
    assert_eq!(req.write_to_bytes().unwrap(), nested(1, &want));
}

fn route() -> (Route, Vec<u8>) {
    let r = Route {
        dest: "10.99.0.0/16".into(),
        gateway: "10.88.0.254".into(),
        device: "eth0".into(),
        source: "10.88.0.5".into(),
        scope: 253,
        family: EnumOrUnknown::new(IPFamily::v6),
        flags: 4,
        mtu: 1400,
        ..Default::default()
    };
    let b = [
        string_field(1, "10.99.0.0/16"),
        string_field(2, "10.88.0.254"),
        string_field(3, "eth0"),
        string_field(4, "10.88.0.5"),
        vec![tag(5, 0), 0xfd, 0x01],
        vec![tag(6, 0), 1],
        vec![tag(7, 0), 4],
        vec![tag(8, 0), 0xf8, 0x0a],
    ]
    .concat();
    (r, b)
}

#[test]
fn route_and_update_routes_request() {
    let (r, b) = route();
    assert_eq!(r.write_to_bytes().unwrap(), b);
    let req = UpdateRoutesRequest {
        routes: MessageField::some(Routes { Routes: vec![r], ..Default::default() }),
        increment: true,
        ..Default::default()
    };
    let want = [nested(1, &nested(1, &b)), vec![tag(2, 0), 1]].concat();
    assert_eq!(req.write_to_bytes().unwrap(), want);
}

#[test]
fn arp_neighbor_and_request() {
    let n = ARPNeighbor {
        toIPAddress: MessageField::some(ip6()),
        device: "eth0".into(),
        lladdr: "02:00:0a:58:00:09".into(),
        state: 128,
        flags: 8,
        ..Default::default()
    };
    let b = [
        nested(1, &ip6_bytes()),
        string_field(2, "eth0"),
        string_field(3, "02:00:0a:58:00:09"),
        vec![tag(4, 0), 0x80, 0x01],
        vec![tag(5, 0), 8],
    ]
    .concat();
    assert_eq!(n.write_to_bytes().unwrap(), b);
    let req = AddARPNeighborsRequest {
        neighbors: MessageField::some(ARPNeighbors { ARPNeighbors: vec![n], ..Default::default() }),
        ..Default::default()
    };
    assert_eq!(req.write_to_bytes().unwrap(), nested(1, &nested(1, &b)));
}

#[test]
fn create_sandbox_request() {
    let req = CreateSandboxRequest {
        hostname: "pod".into(),
        dns: vec!["nameserver 10.96.0.10".into()],
        sandbox_pidns: true,
        sandbox_id: "abc".into(),
        guest_hook_path: "/h".into(),
        kernel_modules: vec![KernelModule { name: "ip_vs".into(), ..Default::default() }],
        ..Default::default()
    };
    let want = [
        string_field(1, "pod"),
        string_field(2, "nameserver 10.96.0.10"),
        vec![tag(4, 0), 1],
        string_field(5, "abc"),
        string_field(6, "/h"),
        nested(7, &string_field(1, "ip_vs")),
    ]
    .concat();
    assert_eq!(req.write_to_bytes().unwrap(), want);
    let s = Storage { mount_point: "/m".into(), fstype: "ext4".into(), ..Default::default() };
    assert_eq!(s.write_to_bytes().unwrap(), [string_field(4, "ext4"), string_field(6, "/m")].concat());
}

#[test]
fn lists_ipvs_and_health() {
    let (r, b) = route();
    let rs = Routes { Routes: vec![r], ..Default::default() };
    assert_eq!(rs.write_to_bytes().unwrap(), nested(1, &b));
    let is =
        Interfaces { Interfaces: vec![Interface { name: "x".into(), ..Default::default() }], ..Default::default() };
    assert_eq!(is.write_to_bytes().unwrap(), nested(1, &string_field(2, "x")));
    assert!(ListInterfacesRequest::new().write_to_bytes().unwrap().is_empty());
    assert!(ListRoutesRequest::new().write_to_bytes().unwrap().is_empty());
    let q = UpdateIPVSRequest { IPVS_req: "ipvsadm --list".into(), ..Default::default() };
    assert_eq!(q.write_to_bytes().unwrap(), string_field(1, "ipvsadm --list"));
    let a = IPVSResponse { IPVS_res: "ok".into(), ..Default::default() };
    assert_eq!(a.write_to_bytes().unwrap(), string_field(1, "ok"));
    let c = CheckRequest { service: "s".into(), ..Default::default() };
    assert_eq!(c.write_to_bytes().unwrap(), string_field(1, "s"));
    let h = HealthCheckResponse {
        status: EnumOrUnknown::new(health_check_response::ServingStatus::SERVING),
        ..Default::default()
    };
    assert_eq!(h.write_to_bytes().unwrap(), vec![tag(1, 0), 1]);
    let v = VersionCheckResponse { grpc_version: "g".into(), agent_version: "a".into(), ..Default::default() };
    assert_eq!(v.write_to_bytes().unwrap(), [string_field(1, "g"), string_field(2, "a")].concat());
}

#[test]
fn service_and_method_names() {
    use std::sync::Arc;
    struct Nothing;
    #[async_trait::async_trait]
    impl agent_client::protocols::agent_ttrpc::AgentService for Nothing {}
    #[async_trait::async_trait]
    impl agent_client::protocols::health_ttrpc::Health for Nothing {}
    let services = agent_client::protocols::agent_ttrpc::create_agent_service(Arc::new(Nothing));
    let svc = services.get("grpc.AgentService").expect("service grpc.AgentService");
    let mut methods: Vec<&String> = svc.methods.keys().collect();
    methods.sort();
    assert_eq!(
        methods,
        [
            "AddARPNeighbors",
            "CloseStdin",
            "CreateContainer",
            "CreateSandbox",
            "ExecProcess",
            "GetMetrics",
            "GetOOMEvent",
            "ListInterfaces",
            "ListRoutes",
            "ReadStderr",
            "ReadStdout",
            "RemoveContainer",
            "SignalProcess",
            "StartContainer",
            "StatsContainer",
            "TtyWinResize",
            "UpdateIPVSRule",
            "UpdateInterface",
            "UpdateRoutes",
            "WaitProcess",
            "WriteStdin"
        ]
    );
    let h = agent_client::protocols::health_ttrpc::create_health(Arc::new(Nothing));
    assert!(h.contains_key("grpc.Health"));
}

/// The container calls with kata's numbers (agent.proto, oci.proto).
#[test]
fn container_messages() {
    use agent_client::protocols::oci::{Process, Root, Spec, User};
    let process = Process {
        Terminal: true,
        User: MessageField::some(User { UID: 5, ..Default::default() }),
        Args: vec!["sh".into()],
        Cwd: "/".into(),
        ..Default::default()
    };
    let process_bytes =
        [vec![tag(1, 0), 1], nested(3, &[tag(1, 0), 5]), string_field(4, "sh"), string_field(6, "/")].concat();
    assert_eq!(process.write_to_bytes().unwrap(), process_bytes);
    let spec = Spec {
        Process: MessageField::some(process),
        Root: MessageField::some(Root { Path: "/r".into(), ..Default::default() }),
        ..Default::default()
    };
    let spec_bytes = [nested(2, &process_bytes), nested(3, &string_field(1, "/r"))].concat();
    assert_eq!(spec.write_to_bytes().unwrap(), spec_bytes);
    let req = CreateContainerRequest {
        container_id: "c".into(),
        exec_id: "c".into(),
        OCI: MessageField::some(spec),
        ..Default::default()
    };
    let want = [string_field(1, "c"), string_field(2, "c"), nested(6, &spec_bytes)].concat();
    assert_eq!(req.write_to_bytes().unwrap(), want);
    let r = ReadStreamRequest { container_id: "c".into(), exec_id: "e".into(), len: 7, ..Default::default() };
    assert_eq!(r.write_to_bytes().unwrap(), [string_field(1, "c"), string_field(2, "e"), vec![tag(3, 0), 7]].concat());
    // kata's numbers for what issue 19 added: Linux.Resources 4 (Memory 2, its Limit 1),
    // Linux.Seccomp 8 (DefaultAction 1), CreateContainerRequest.sandbox_pidns 7, OOMEvent and
    // StatsContainerRequest's container_id 1.
    use agent_client::protocols::oci::{Linux, LinuxMemory, LinuxResources, LinuxSeccomp};
    let linux = Linux {
        Resources: MessageField::some(LinuxResources {
            Memory: MessageField::some(LinuxMemory { Limit: 16, ..Default::default() }),
            ..Default::default()
        }),
        Seccomp: MessageField::some(LinuxSeccomp { DefaultAction: "A".into(), ..Default::default() }),
        ..Default::default()
    };
    let want = [nested(4, &nested(2, &[tag(1, 0), 16])), nested(8, &string_field(1, "A"))].concat();
    assert_eq!(linux.write_to_bytes().unwrap(), want);
    let req = CreateContainerRequest { sandbox_pidns: true, ..Default::default() };
    assert_eq!(req.write_to_bytes().unwrap(), vec![tag(7, 0), 1]);
    let ev = agent_client::protocols::agent::OOMEvent { container_id: "c".into(), ..Default::default() };
    assert_eq!(ev.write_to_bytes().unwrap(), string_field(1, "c"));
    let st = agent_client::protocols::agent::StatsContainerRequest { container_id: "c".into(), ..Default::default() };
    assert_eq!(st.write_to_bytes().unwrap(), string_field(1, "c"));
    let t = TtyWinResizeRequest { row: 24, column: 80, ..Default::default() };
    assert_eq!(t.write_to_bytes().unwrap(), vec![tag(3, 0), 24, tag(4, 0), 80]);
    let s = SignalProcessRequest { signal: 9, ..Default::default() };
    assert_eq!(s.write_to_bytes().unwrap(), vec![tag(3, 0), 9]);
    let w = WaitProcessResponse { status: 3, ..Default::default() };
    assert_eq!(w.write_to_bytes().unwrap(), vec![tag(1, 0), 3]);
    let d = WriteStreamRequest { data: b"x".to_vec(), ..Default::default() };
    assert_eq!(d.write_to_bytes().unwrap(), vec![tag(3, 2), 1, b'x']);
    let rm = RemoveContainerRequest { container_id: "c".into(), timeout: 10, ..Default::default() };
    assert_eq!(rm.write_to_bytes().unwrap(), [string_field(1, "c"), vec![tag(2, 0), 10]].concat());
}
