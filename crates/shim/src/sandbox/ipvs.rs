//! IPVS rules in a running sandbox's VM (`kata-ipvs`): every command is checked against the
//! sandbox's rule table before the VM sees it. The table and the guest's rules never drift: when
//! a call to the guest fails (refused, timed out, the connection lost) the table is counted
//! again from the guest's own `ipvsadm -S -n`, and a restore that failed is cleared in the guest.

use std::time::Instant;

use netmgmt::ipvs::{IpvsCommand, IpvsError, Restore};

use super::{Ops, Sandbox};
use crate::error::{Error, Result};
use crate::failpoint;

const NO_IPVS: &str = "IPVS support: it does not serve UpdateIPVSRule (an openEuler extension of kata's protocol)";

/// An agent's answer to a method it does not serve (ttrpc's UNIMPLEMENTED, or NOT_FOUND naming it).
pub fn unserved(e: &agent_client::Error) -> bool {
    e.code() == Some(ttrpc::Code::UNIMPLEMENTED)
        || (e.code() == Some(ttrpc::Code::NOT_FOUND)
            && e.status_message().is_some_and(|m| m.contains("UpdateIPVSRule")))
}

/// The guest call's result, then the failure-injection point `step` (a test build can make a
/// call that succeeded look failed, as a timeout after the guest applied it would).
async fn after_step(sent: Result<String>, step: &str) -> Result<String> {
    let out = sent?;
    failpoint::hit_async(step).await?;
    Ok(out)
}

impl Sandbox {
    /// One ipvsadm command; the guest's output and the rules held afterwards.
    pub async fn ipvsadm(&self, cmd: IpvsCommand, deadline: Option<Instant>) -> Result<(String, usize)> {
        let mut ops = self.ops_by(deadline).await?;
        ops.ipvs.check(&cmd)?;
        let sent = self.ipvs_call(&cmd.request()).await;
        match after_step(sent, "ipvs:applied").await {
            Ok(out) => {
                ops.ipvs.apply(&cmd);
                Ok((out, ops.ipvs.rules()))
            }
            Err(e @ Error::AgentLacks(_)) => Err(e),
            Err(e) => {
                // Applied or not (a timeout does not say): what the guest has is the truth.
                self.recount_ipvs(&mut ops).await;
                Err(e)
            }
        }
    }

    /// A whole rule file in one request, only into an empty table. If the guest fails it (part
    /// may be loaded), the guest's table is cleared again.
    pub async fn ipvs_restore(&self, restore: Restore, deadline: Option<Instant>) -> Result<(String, usize)> {
        let mut ops = self.ops_by(deadline).await?;
        if ops.ipvs.rules() > 0 {
            return Err(IpvsError::NotEmpty(ops.ipvs.rules()).into());
        }
        let sent = self.ipvs_call(&restore.request()).await;
        match after_step(sent, "ipvs:restored").await {
            Ok(out) => {
                ops.ipvs = restore.table;
                Ok((out, ops.ipvs.rules()))
            }
            Err(e @ Error::AgentLacks(_)) => Err(e),
            Err(e) => {
                // Part of the file may be loaded: the table was empty, so it is emptied again.
                if let Err(c) = self.ipvs_call(&IpvsCommand::Clear.request()).await {
                    slog::error!(self.log, "clearing a failed IPVS restore"; "error" => %c);
                }
                self.recount_ipvs(&mut ops).await;
                Err(e)
            }
        }
    }

    pub async fn conntrack_cleanup(&self, request: String, deadline: Option<Instant>) -> Result<(String, usize)> {
        let ops = self.ops_by(deadline).await?;
        let out = self.ipvs_call(&request).await?;
        Ok((out, ops.ipvs.rules()))
    }

    /// `UpdateIPVSRule`. kata's agent does not serve it (an openEuler extension): said so, and
    /// nothing is sent.
    async fn ipvs_call(&self, req: &str) -> Result<String> {
        if !self.extended_agent {
            return Err(Error::AgentLacks(NO_IPVS));
        }
        self.agent
            .update_ipvs_rule(req)
            .await
            .map_err(|e| if unserved(&e) { Error::AgentLacks(NO_IPVS) } else { e.into() })
    }

    /// The table as the guest has it now (`ipvsadm -S -n`, parsed as a rule file).
    async fn recount_ipvs(&self, ops: &mut Ops) {
        let counted = match self.ipvs_call("ipvsadm -S -n").await {
            Ok(saved) => Restore::parse(&saved).map(|r| r.table).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match counted {
            Ok(table) => {
                slog::info!(self.log, "IPVS rules counted again from the guest"; "rules" => table.rules());
                ops.ipvs = table;
            }
            Err(e) => slog::error!(self.log, "IPVS rules could not be counted from the guest"; "error" => e),
        }
    }
}
