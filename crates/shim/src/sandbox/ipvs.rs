//! IPVS rules in a running sandbox's VM (`kata-ipvs`): every command is checked against the
//! sandbox's rule table before the VM sees it.

use netmgmt::ipvs::{IpvsCommand, IpvsError, Restore};

use super::Sandbox;
use crate::error::Result;

impl Sandbox {
    /// One ipvsadm command; the guest's output and the rules held afterwards.
    pub async fn ipvsadm(&self, cmd: IpvsCommand) -> Result<(String, usize)> {
        let mut ops = self.ops.lock().await;
        ops.ipvs.check(&cmd)?;
        let out = self.agent.update_ipvs_rule(&cmd.request()).await?;
        ops.ipvs.apply(&cmd);
        Ok((out, ops.ipvs.rules()))
    }

    /// A whole rule file in one request, only into an empty table.
    pub async fn ipvs_restore(&self, restore: Restore) -> Result<(String, usize)> {
        let mut ops = self.ops.lock().await;
        if ops.ipvs.rules() > 0 {
            return Err(IpvsError::NotEmpty(ops.ipvs.rules()).into());
        }
        let out = self.agent.update_ipvs_rule(&restore.request()).await?;
        ops.ipvs = restore.table;
        Ok((out, ops.ipvs.rules()))
    }

    pub async fn conntrack_cleanup(&self, request: String) -> Result<(String, usize)> {
        let ops = self.ops.lock().await;
        let out = self.agent.update_ipvs_rule(&request).await?;
        Ok((out, ops.ipvs.rules()))
    }
}
