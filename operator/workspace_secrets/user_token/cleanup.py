"""Deleting a UserToken: remove what the operator uploaded (SSH keys), revoke the token at the provider, delete
the token Secret. Never given up silently: while the provider cannot be reached this raises RetryLater (kopf keeps
the finalizer and retries); the skip-revocation annotation is the administrator's way out."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import ProblemFound
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.oauth.base import GrantRejected, InvalidToken, ProviderMisconfigured, TemporaryFailure
from workspace_secrets.oauth.protocol import Identity
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.kube import core_path
from workspace_secrets.user_keys import policy as keys
from workspace_secrets.oauth import token_secret
from workspace_secrets.user_token import context, policy
from workspace_secrets.user_token.context import Context, event_ref

log = logging.getLogger(__name__)


async def finalize_locked(ctx: Context, body: Mapping[str, Any], ut: UserToken) -> None:
    """Remove the uploaded SSH key(s), revoke the token at the provider, delete the Secret (under the token's lock)."""
    path = core_path(ut.namespace, "secrets", ut.secret_name)
    secret = await ctx.kube.get(path)
    owned = secret is not None and token_secret.is_owned_by(secret, ut.uid)
    stored = token_secret.read_token_secret(secret) if owned and secret is not None else None
    unsaved = ctx.memory.unsaved.get(ut.uid)  # kept until the cleanup is done: a retry revokes it too
    tokens = unsaved[0] if unsaved else (stored.tokens if stored else None)
    status = body.get("status") or {}
    bound = await _bound(ctx, body, ut) if tokens is not None and not ut.skip_revocation else None
    if bound is not None:
        ut = bound
        where = context.where(ut)
        provider = ctx.provider(ut)
        identity = Identity(login=status.get("login", ""), user_id=status.get("providerUserID", ""))
        key_ids = [k.id for k in keys.recorded_keys(status, operator_title=policy.ssh_key_title(ut)) if k.added_by == keys.ADDED_BY_OPERATOR]  # never the user's own
        try:
            if provider.supports_ssh_keys:
                # The recorded keys, and the keys the user's workspaces use if an upload was not recorded yet (a
                # rotation re-upload racing this deletion) and it carries the operator's title: nothing the operator
                # uploaded is left behind, nothing the user added by hand is removed.
                if ut.add_ssh_key:
                    title = policy.ssh_key_title(ut)
                    for used in (await ctx.user_keys.workspace_keys(ut.namespace, ut.user))[:keys.MAX_UPLOADED_KEYS]:
                        found = await provider.find_ssh_key(tokens, identity, used.key.body)
                        if found is not None and found.title == title and found.id not in key_ids:
                            key_ids.append(found.id)
                for kid in key_ids:
                    await provider.delete_ssh_key(tokens, identity, kid)
                    await ctx.events.normal(event_ref(body), "SSHKeyRemoved", f"Removed SSH key {kid} from {where}.")
            if provider.supports_revocation:
                client = await ctx.client(ut)
                await provider.revoke(client, tokens)
                await ctx.events.normal(event_ref(body), "TokenRevoked", f"Revoked the token at {where}.")
        except (InvalidToken, GrantRejected):
            pass  # the provider no longer accepts the token: nothing left to revoke or remove with it
        except (TemporaryFailure, ProviderMisconfigured, ProblemFound) as exc:
            message = exc.problem.message if isinstance(exc, ProblemFound) else str(exc)
            await ctx.events.warning(event_ref(body), "RevocationFailed",
                                       f"Could not clean up at {where} ({message}); retrying. To delete without revoking, "
                                       f"annotate the UserToken {c.ANNOTATION_SKIP_REVOCATION}=true.")
            raise RetryLater(f"cleanup at {where} failed: {message}", delay=10 if isinstance(exc, TemporaryFailure) else 60) from None
    if owned:
        await ctx.kube.delete(path, uid=secret["metadata"]["uid"])  # type: ignore[index]
    log.info("UserToken %s/%s cleaned up", ut.namespace, ut.name)


async def _bound(ctx: Context, body: Mapping[str, Any], ut: UserToken) -> UserToken | None:
    try:
        return await ctx.bind(ut)
    except ProblemFound as exc:
        # No application (deleted, or this namespace no longer allowed): nothing to revoke with. The token
        # Secret is deleted all the same; the grant ends at the provider by its own expiry.
        await ctx.events.warning(event_ref(body), "RevocationSkipped", f"{exc.problem.message} The token could not be revoked at the provider.")
        return None
