"""`facechain cluster status`: the cluster's nodes, GPUs, actors, the adapters they hold and the jobs in flight."""

from __future__ import annotations

from engine.config import Settings
from engine.errors import SettingsError
from engine.store import Store

INSTALL_HINT = "FACECHAIN_RAY_ADDRESS is set but Ray is not installed here: pip install -e '.[cluster]'."


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        raise SettingsError(INSTALL_HINT) from None


def cluster_status(settings: Settings, store: Store, timeout: float = 5.0) -> dict:
    """What the cluster looks like now; {"enabled": false} when FACECHAIN_RAY_ADDRESS is empty."""
    running = [{"job": row["id"], "kind": row["kind"], "user": row["user_id"], "ran_on": row["ran_on"],
                "progress": row["progress"], "text": row["progress_text"]}
               for row in store.db["jobs"].rows_where("state = 'running'", order_by="id")]
    if not settings.ray_address:
        return {"enabled": False, "jobs_running": running}
    from engine.jobs.cluster.address import check_address, check_reachable

    check_address(settings.ray_address, settings.ray_allow_public)
    require_ray()
    check_reachable(settings.ray_address)
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    from engine.jobs.cluster.actor import ACTOR_PREFIX, NAMESPACE

    try:
        connected_here = not ray.is_initialized()
        if connected_here:
            ray.init(address=settings.ray_address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RayError, RuntimeError) as error:
        raise SettingsError(f"No Ray cluster answers at {settings.ray_address} ({error}): start it with "
                            "`ray start --head` (see the README).") from None
    try:
        nodes = [{"node_id": node["NodeID"], "ip": node["NodeManagerAddress"], "alive": node["Alive"],
                  "gpus": node["Resources"].get("GPU", 0), "cpus": node["Resources"].get("CPU", 0)}
                 for node in ray.nodes()]
        actors = []
        for name in ray.util.list_named_actors():  # the GCS's list: no dashboard needed
            if not name.startswith(ACTOR_PREFIX):
                continue
            try:
                info = ray.get(ray.get_actor(name, namespace=NAMESPACE).info.remote(), timeout=timeout)
            except (GetTimeoutError, RayError, ValueError):  # busy restarting, or gone meanwhile
                info = {"name": name, "node_id": None, "job": None, "adapters": [], "answered": False}
            actors.append(info)
        actors.sort(key=lambda info: info["name"])
    finally:
        if connected_here:
            ray.shutdown()
    return {"enabled": True, "address": settings.ray_address, "nodes": nodes,
            "gpus": sum(node["gpus"] for node in nodes if node["alive"]), "actors": actors, "jobs_running": running}
