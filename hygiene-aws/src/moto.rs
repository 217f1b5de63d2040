//! Test support (feature `test-support`): a moto server on a free loopback
//! port, and the few EC2 / ELBv2 calls needed to build a pool in it.
//!
//! moto is found through `HYGIENE_MOTO_SERVER`, then the workspace's
//! `.venv/bin/moto_server` (installed by `./scripts/test`), then `PATH`.
//! Most EC2 calls go over plain HTTP to moto's query API; Auto Scaling
//! goes through its SDK.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ProtocolEnum, TargetDescription,
};
use aws_sdk_ssm::config::Credentials;
use hygiene_core::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::error::{call, Subject};

/// The region every moto resource lives in.
pub const REGION: &str = "us-east-1";

/// A moto server of this process, killed when dropped.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
}

/// Where a moto server binary is, if anywhere.
pub fn find_moto_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HYGIENE_MOTO_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    })
}

fn moto_err(message: impl Into<String>) -> Error {
    Error::unavailable("moto", message)
}

impl MotoServer {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and waits (up to
    /// 60 s) until it answers.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when moto is not installed or does not answer.
    pub async fn start() -> Result<Self> {
        let bin = find_moto_server().ok_or_else(|| moto_err("moto_server not found: run ./scripts/test, which installs moto[server] into .venv, or set HYGIENE_MOTO_SERVER"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| moto_err(format!("no free port: {e}")))?
            .port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| moto_err(format!("cannot start {}: {e}", bin.display())))?;
        let server = Self { child, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if server.http("GET", "/moto-api/", "", None).await.is_ok() {
                return Ok(server);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(moto_err(format!(
                    "{} did not answer on port {port} within 60 s",
                    bin.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An AWS configuration for this server: region us-east-1, dummy static
    /// credentials, endpoint set.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .endpoint_url(self.endpoint_url())
            .load()
            .await
    }

    /// An ELBv2 client for this server.
    pub async fn elbv2(&self) -> aws_sdk_elasticloadbalancingv2::Client {
        aws_sdk_elasticloadbalancingv2::Client::new(&self.sdk_config().await)
    }

    /// An Auto Scaling client for this server.
    pub async fn autoscaling(&self) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::new(&self.sdk_config().await)
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when moto does not answer.
    pub async fn reset(&self) -> Result<()> {
        self.http("POST", "/moto-api/reset", "", None)
            .await
            .map(drop)
    }

    /// Kills the server now (dropping it does the same).
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub async fn stop(mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .map_err(|e| moto_err(format!("cannot stop moto: {e}")))
    }

    /// One HTTP/1.1 request to moto; the body of a 200 reply.
    async fn http(
        &self,
        method: &str,
        path: &str,
        body: &str,
        service: Option<&str>,
    ) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| moto_err(e.to_string()))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if let Some(svc) = service {
            // moto picks the service from the credential scope; the
            // signature itself is not checked.
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/{svc}/aws4_request, SignedHeaders=host, Signature=0\r\n"
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| moto_err(e.to_string()))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| moto_err(e.to_string()))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            let status = head.lines().next().unwrap_or_default();
            return Err(Error::rejected(
                "moto",
                format!(
                    "{method} {path}: {status}: {}",
                    body.chars().take(500).collect::<String>()
                ),
            ));
        }
        Ok(body.to_owned())
    }

    /// One EC2 query API call; the XML reply.
    async fn ec2(&self, params: &[(&str, String)]) -> Result<String> {
        let mut body = String::from("Version=2016-11-15");
        for (k, v) in params {
            body.push('&');
            body.push_str(k);
            body.push('=');
            body.push_str(&form_encode(v));
        }
        self.http("POST", "/", &body, Some("ec2")).await
    }

    /// Creates a VPC (10.0.0.0/16); its id.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn create_vpc(&self) -> Result<String> {
        let xml = self
            .ec2(&[
                ("Action", "CreateVpc".into()),
                ("CidrBlock", "10.0.0.0/16".into()),
            ])
            .await?;
        first_tag(&xml, "vpcId")
            .ok_or_else(|| Error::protocol("moto", "CreateVpc reply without vpcId"))
    }

    /// Creates a subnet of `vpc` in `zone` with `cidr`; its id.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn create_subnet(&self, vpc: &str, cidr: &str, zone: &str) -> Result<String> {
        let xml = self
            .ec2(&[
                ("Action", "CreateSubnet".into()),
                ("VpcId", vpc.into()),
                ("CidrBlock", cidr.into()),
                ("AvailabilityZone", zone.into()),
            ])
            .await?;
        first_tag(&xml, "subnetId")
            .ok_or_else(|| Error::protocol("moto", "CreateSubnet reply without subnetId"))
    }

    /// Runs `count` instances (in `subnet` when given); their ids.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn run_instances(&self, count: usize, subnet: Option<&str>) -> Result<Vec<String>> {
        let mut params = vec![
            ("Action", "RunInstances".to_owned()),
            ("ImageId", "ami-12c6146b".to_owned()),
            ("InstanceType", "t3.micro".to_owned()),
            ("MinCount", count.to_string()),
            ("MaxCount", count.to_string()),
        ];
        if let Some(s) = subnet {
            params.push(("SubnetId", s.to_owned()));
        }
        let xml = self.ec2(&params).await?;
        let mut ids = all_tags(&xml, "instanceId");
        let mut seen = std::collections::HashSet::new();
        ids.retain(|i| seen.insert(i.clone()));
        if ids.len() != count {
            return Err(Error::protocol(
                "moto",
                format!(
                    "RunInstances returned {} instance ids for {count}",
                    ids.len()
                ),
            ));
        }
        Ok(ids)
    }

    /// Creates an HTTP target group of instance targets on `port`; its ARN.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn create_target_group(&self, name: &str, vpc: &str, port: u16) -> Result<String> {
        let client = self.elbv2().await;
        let out = call(
            "elbv2",
            "CreateTargetGroup",
            || Subject::groups(name),
            client
                .create_target_group()
                .name(name)
                .protocol(ProtocolEnum::Http)
                .port(i32::from(port))
                .vpc_id(vpc)
                .send(),
        )
        .await?;
        out.target_groups()
            .first()
            .and_then(|g| g.target_group_arn())
            .map(str::to_owned)
            .ok_or_else(|| Error::protocol("moto", "CreateTargetGroup reply without an ARN"))
    }

    /// Creates an HTTP target group of IP targets on `port`; its ARN.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn create_ip_target_group(&self, name: &str, vpc: &str, port: u16) -> Result<String> {
        let client = self.elbv2().await;
        let out = call(
            "elbv2",
            "CreateTargetGroup",
            || Subject::groups(name),
            client
                .create_target_group()
                .name(name)
                .protocol(ProtocolEnum::Http)
                .port(i32::from(port))
                .vpc_id(vpc)
                .target_type(aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum::Ip)
                .send(),
        )
        .await?;
        out.target_groups()
            .first()
            .and_then(|g| g.target_group_arn())
            .map(str::to_owned)
            .ok_or_else(|| Error::protocol("moto", "CreateTargetGroup reply without an ARN"))
    }

    /// The primary private IPv4 address of an instance (DescribeInstances).
    ///
    /// # Errors
    /// When moto refuses or the instance has none.
    pub async fn private_ip(&self, instance: &str) -> Result<String> {
        let xml = self
            .ec2(&[
                ("Action", "DescribeInstances".to_owned()),
                ("InstanceId.1", instance.to_owned()),
            ])
            .await?;
        all_tags(&xml, "privateIpAddress")
            .into_iter()
            .next()
            .ok_or_else(|| Error::protocol("moto", format!("{instance} has no private IP")))
    }

    /// Registers `(instance id, port)` pairs in a target group.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn register(&self, target_group: &str, targets: &[(String, u16)]) -> Result<()> {
        let client = self.elbv2().await;
        for chunk in targets.chunks(100) {
            let descs = chunk
                .iter()
                .map(|(id, port)| {
                    TargetDescription::builder()
                        .id(id)
                        .port(i32::from(*port))
                        .build()
                })
                .collect();
            call(
                "elbv2",
                "RegisterTargets",
                || Subject::groups(target_group),
                client
                    .register_targets()
                    .target_group_arn(target_group)
                    .set_targets(Some(descs))
                    .send(),
            )
            .await?;
        }
        Ok(())
    }

    /// Sets target group attributes (`deregistration_delay.timeout_seconds`,
    /// …) with ModifyTargetGroupAttributes.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn set_target_group_attributes(
        &self,
        target_group: &str,
        attributes: &[(&str, &str)],
    ) -> Result<()> {
        let attrs = attributes
            .iter()
            .map(|(k, v)| {
                aws_sdk_elasticloadbalancingv2::types::TargetGroupAttribute::builder()
                    .key(*k)
                    .value(*v)
                    .build()
            })
            .collect();
        call(
            "elbv2",
            "ModifyTargetGroupAttributes",
            || Subject::groups(target_group),
            self.elbv2()
                .await
                .modify_target_group_attributes()
                .target_group_arn(target_group)
                .set_attributes(Some(attrs))
                .send(),
        )
        .await?;
        Ok(())
    }

    /// Tags `resources` (instances, …) with `key` = `value` (EC2 CreateTags).
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn create_tags(&self, resources: &[String], key: &str, value: &str) -> Result<()> {
        let mut params = vec![
            ("Action", "CreateTags".to_owned()),
            ("Tag.1.Key", key.to_owned()),
            ("Tag.1.Value", value.to_owned()),
        ];
        let names: Vec<String> = (1..=resources.len())
            .map(|i| format!("ResourceId.{i}"))
            .collect();
        for (n, r) in names.iter().zip(resources) {
            params.push((n.as_str(), r.clone()));
        }
        self.ec2(&params).await.map(|_| ())
    }

    /// Creates an Auto Scaling group of `size` instances in `subnet` (from
    /// a launch configuration of the same name); the ids of its instances.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn create_auto_scaling_group(
        &self,
        name: &str,
        subnet: &str,
        size: i32,
    ) -> Result<Vec<String>> {
        let client = aws_sdk_autoscaling::Client::new(&self.sdk_config().await);
        call(
            "autoscaling",
            "CreateLaunchConfiguration",
            || Subject::groups(name),
            client
                .create_launch_configuration()
                .launch_configuration_name(name)
                .image_id("ami-12c6146b")
                .instance_type("t3.micro")
                .send(),
        )
        .await?;
        call(
            "autoscaling",
            "CreateAutoScalingGroup",
            || Subject::groups(name),
            client
                .create_auto_scaling_group()
                .auto_scaling_group_name(name)
                .launch_configuration_name(name)
                .min_size(size)
                .max_size(size)
                .desired_capacity(size)
                .vpc_zone_identifier(subnet)
                .send(),
        )
        .await?;
        let out = call(
            "autoscaling",
            "DescribeAutoScalingGroups",
            || Subject::groups(name),
            client
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(name)
                .send(),
        )
        .await?;
        Ok(out
            .auto_scaling_groups()
            .iter()
            .flat_map(|g| g.instances())
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect())
    }

    /// Creates an application load balancer in `subnets` with one HTTP
    /// listener per target group (ports 80, 81, …); its ARN.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn create_load_balancer(
        &self,
        name: &str,
        subnets: &[String],
        target_groups: &[String],
    ) -> Result<String> {
        let client = self.elbv2().await;
        let out = call(
            "elbv2",
            "CreateLoadBalancer",
            || Subject::groups(name),
            client
                .create_load_balancer()
                .name(name)
                .set_subnets(Some(subnets.to_vec()))
                .send(),
        )
        .await?;
        let arn = out
            .load_balancers()
            .first()
            .and_then(|l| l.load_balancer_arn())
            .map(str::to_owned)
            .ok_or_else(|| Error::protocol("moto", "CreateLoadBalancer reply without an ARN"))?;
        for (i, tg) in target_groups.iter().enumerate() {
            let port = 80 + i32::try_from(i).unwrap_or(0);
            call(
                "elbv2",
                "CreateListener",
                || Subject::groups(arn.clone()),
                client
                    .create_listener()
                    .load_balancer_arn(&arn)
                    .protocol(ProtocolEnum::Http)
                    .port(port)
                    .default_actions(
                        Action::builder()
                            .r#type(ActionTypeEnum::Forward)
                            .target_group_arn(tg)
                            .build(),
                    )
                    .send(),
            )
            .await?;
        }
        Ok(arn)
    }
}

fn form_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn all_tags(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let Some(end) = rest.find(&close) else { break };
        out.push(rest[..end].to_owned());
        rest = &rest[end + close.len()..];
    }
    out
}

fn first_tag(xml: &str, tag: &str) -> Option<String> {
    all_tags(xml, tag).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_and_encodes_forms() {
        let xml = "<a><instanceId>i-1</instanceId><x/><instanceId>i-2</instanceId></a>";
        assert_eq!(all_tags(xml, "instanceId"), vec!["i-1", "i-2"]);
        assert_eq!(first_tag(xml, "vpcId"), None);
        assert_eq!(form_encode("10.0.0.0/16"), "10.0.0.0%2F16");
    }
}
