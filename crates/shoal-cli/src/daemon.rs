//! `daemon.rs`: the requests the verbs send, with every failure mapped to a `CliError` that
//! names the daemon's address, and every missing response field refused instead of defaulted.

use shoal_api::v1::{
    self, Cluster, Config, Node, control_client::ControlClient, swarm_client::SwarmClient,
};
use tonic::transport::Channel;

use crate::CliError;
use crate::connect::{connect, display_host};

/// Both services of one daemon, over one channel.
pub(crate) struct Daemon {
    host: String,
    control: ControlClient<Channel>,
    swarm: SwarmClient<Channel>,
}

impl Daemon {
    pub(crate) async fn connect(host: &str) -> Result<Self, CliError> {
        let channel = connect(host).await?;
        Ok(Daemon {
            host: display_host(host),
            control: ControlClient::new(channel.clone()),
            swarm: SwarmClient::new(channel),
        })
    }

    fn fail(&self, status: tonic::Status) -> CliError {
        CliError::from_status(&self.host, status)
    }

    // Swarm service --------------------------------------------------------------------------

    pub(crate) async fn init(
        &mut self,
        req: v1::InitRequest,
    ) -> Result<v1::InitResponse, CliError> {
        let res = self.swarm.init(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn join(
        &mut self,
        req: v1::JoinRequest,
    ) -> Result<v1::JoinResponse, CliError> {
        let res = self.swarm.join(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn leave(&mut self, force: bool) -> Result<(), CliError> {
        let req = v1::LeaveRequest { force };
        self.swarm.leave(req).await.map_err(|s| self.fail(s))?;
        Ok(())
    }

    pub(crate) async fn info(&mut self) -> Result<v1::InfoResponse, CliError> {
        let res = self
            .swarm
            .info(v1::InfoRequest {})
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    // Control service: cluster ---------------------------------------------------------------

    pub(crate) async fn get_cluster(&mut self) -> Result<Cluster, CliError> {
        let res = self
            .control
            .get_cluster(v1::GetClusterRequest {})
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .cluster
            .ok_or(CliError::Protocol("GetCluster returned no cluster"))
    }

    pub(crate) async fn update_cluster(
        &mut self,
        req: v1::UpdateClusterRequest,
    ) -> Result<Cluster, CliError> {
        let res = self
            .control
            .update_cluster(req)
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .cluster
            .ok_or(CliError::Protocol("UpdateCluster returned no cluster"))
    }

    // Control service: nodes -----------------------------------------------------------------

    pub(crate) async fn get_node(&mut self, reference: &str) -> Result<Node, CliError> {
        // `self` names the node this daemon runs, as in Docker; only this host knows which.
        let node = if reference == "self" {
            let info = self.info().await?;
            if info.node_id.is_empty() {
                return Err(CliError::Usage(
                    "this node is not part of a swarm, so it has no node to name as \"self\""
                        .to_owned(),
                ));
            }
            info.node_id
        } else {
            reference.to_owned()
        };
        let req = v1::GetNodeRequest { node };
        let res = self.control.get_node(req).await.map_err(|s| self.fail(s))?;
        res.into_inner()
            .node
            .ok_or(CliError::Protocol("GetNode returned no node"))
    }

    pub(crate) async fn list_nodes(
        &mut self,
        filters: v1::ListFilters,
    ) -> Result<Vec<Node>, CliError> {
        let req = v1::ListNodesRequest {
            filters: Some(filters),
        };
        let res = self
            .control
            .list_nodes(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner().nodes)
    }

    pub(crate) async fn update_node(
        &mut self,
        node_id: &str,
        version: u64,
        spec: v1::NodeSpec,
    ) -> Result<Node, CliError> {
        let req = v1::UpdateNodeRequest {
            node_id: node_id.to_owned(),
            version,
            spec: Some(spec),
        };
        let res = self
            .control
            .update_node(req)
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .node
            .ok_or(CliError::Protocol("UpdateNode returned no node"))
    }

    pub(crate) async fn remove_node(&mut self, node_id: &str, force: bool) -> Result<(), CliError> {
        let req = v1::RemoveNodeRequest {
            node_id: node_id.to_owned(),
            force,
        };
        self.control
            .remove_node(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(())
    }

    // Control service: configs ---------------------------------------------------------------

    pub(crate) async fn create_config(&mut self, spec: v1::ConfigSpec) -> Result<Config, CliError> {
        let req = v1::CreateConfigRequest { spec: Some(spec) };
        let res = self
            .control
            .create_config(req)
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .config
            .ok_or(CliError::Protocol("CreateConfig returned no config"))
    }

    pub(crate) async fn get_config(&mut self, reference: &str) -> Result<Config, CliError> {
        let req = v1::GetConfigRequest {
            config: reference.to_owned(),
        };
        let res = self
            .control
            .get_config(req)
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .config
            .ok_or(CliError::Protocol("GetConfig returned no config"))
    }

    pub(crate) async fn list_configs(
        &mut self,
        filters: v1::ListFilters,
    ) -> Result<Vec<Config>, CliError> {
        let req = v1::ListConfigsRequest {
            filters: Some(filters),
        };
        let res = self
            .control
            .list_configs(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner().configs)
    }

    pub(crate) async fn remove_config(&mut self, config_id: &str) -> Result<(), CliError> {
        let req = v1::RemoveConfigRequest {
            config_id: config_id.to_owned(),
        };
        self.control
            .remove_config(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(())
    }
}
