# The workspace-secrets-operator part of a Coder Kubernetes template (Terraform). Add these to your template (Coder's
# "Kubernetes (Deployment)" starter: a home PVC that lives as long as the workspace, and a Deployment with
# `count = data.coder_workspace.me.start_count`, so stopping a workspace deletes its Deployment).
# The same objects as plain YAML, walked through: examples/coder-workspace-template.yaml and
# docs/users/workspace-template.md.
#
# What the workspace gets: the user's SSH key (shared by all their workspaces), their GitHub token if they have
# connected it (optional here: the workspace never waits for it), and a Kubernetes token for ServiceAccount
# "deployer" as a kubeconfig, minted while the workspace runs and revoked when it stops.
#
# The platform's part, once: the operator with the webhook on, the provider `cluster-tokens`
# (examples/providers/kubernetes-token.yaml), the OAuthApplication `github` (examples/oauthapplication-github.yaml),
# and Coder's provisioner ServiceAccount in the chart's `policies.platformUsers` (it creates WorkspaceSecrets for
# every user). Coder usernames must be the users' Kubernetes usernames (after policies.userPrefix/userSuffix).

locals {
  wso_user      = lower(data.coder_workspace_owner.me.name)
  wso_workspace = "coder-${lower(data.coder_workspace_owner.me.name)}-${lower(data.coder_workspace.me.name)}"
  # Labels the operator reads: whose workspace an object is, and which WorkspaceSecret its pods get.
  wso_user_label   = { "workspace-secrets.io/user" = local.wso_user }
  wso_secret_label = { "workspace-secrets.io/workspace-secret" = "${local.wso_workspace}-secrets" }
}

# The home volume is the WorkspaceSecret's anchor: it outlives stops, and deleting the workspace deletes it, and
# with it (garbage collection) the WorkspaceSecret, its Secret and every credential.
resource "kubernetes_persistent_volume_claim" "home" {
  metadata {
    name      = "${local.wso_workspace}-home"
    namespace = var.namespace
    labels    = local.wso_user_label # a WorkspaceSecret binds only to a workspace of its own user
  }
  wait_until_bound = false
  spec {
    access_modes = ["ReadWriteOnce"]
    resources {
      requests = { storage = "10Gi" }
    }
  }
}

resource "kubernetes_manifest" "workspace_secrets" {
  manifest = {
    apiVersion = "workspace-secrets.io/v1alpha1"
    kind       = "WorkspaceSecret"
    metadata = {
      name      = "${local.wso_workspace}-secrets"
      namespace = var.namespace
    }
    spec = {
      user = local.wso_user
      workspaceRef = {
        apiVersion = "v1"
        kind       = "PersistentVolumeClaim"
        name       = kubernetes_persistent_volume_claim.home.metadata[0].name
      }
      mountPath = "/home/coder/.workspace-secrets"
      ssh = {
        knownHosts = ["github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]
      }
      userTokens = [
        { name = "${local.wso_user}-github", optional = true },
      ]
      credentials = [
        {
          name       = "kube" # files kube.token, kube.kubeconfig; env KUBECONFIG
          provider   = "cluster-tokens"
          parameters = { serviceAccount = "deployer", expirationSeconds = "3600" }
        },
      ]
    }
  }
}

resource "kubernetes_deployment" "main" {
  count = data.coder_workspace.me.start_count
  metadata {
    name      = local.wso_workspace
    namespace = var.namespace
    labels    = local.wso_user_label
  }
  spec {
    replicas = 1
    selector {
      match_labels = { "app.kubernetes.io/instance" = local.wso_workspace }
    }
    strategy {
      type = "Recreate"
    }
    template {
      metadata {
        # The webhook mounts the WorkspaceSecret's Secret, sets its env vars, and holds the pod until it is ready.
        labels = merge({ "app.kubernetes.io/instance" = local.wso_workspace }, local.wso_user_label, local.wso_secret_label)
      }
      spec {
        automount_service_account_token = false # the workspace uses the minted kubeconfig
        security_context {
          run_as_user = 1000
          fs_group    = 1000 # the injected files are group-readable for this group
        }
        container {
          name    = "dev"
          image   = "codercom/enterprise-base:ubuntu"
          command = ["sh", "-c", coder_agent.main.init_script]
          env {
            name  = "CODER_AGENT_TOKEN"
            value = coder_agent.main.token
          }
          volume_mount {
            name       = "home"
            mount_path = "/home/coder"
          }
        }
        volume {
          name = "home"
          persistent_volume_claim {
            claim_name = kubernetes_persistent_volume_claim.home.metadata[0].name
          }
        }
      }
    }
  }
  depends_on = [kubernetes_manifest.workspace_secrets]
}
