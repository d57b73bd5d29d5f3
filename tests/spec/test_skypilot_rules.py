"""One test per SkyPilot 0.14.1 task-YAML rule skyloom mirrors: a document SkyPilot accepts,
one it rejects, and the field skyloom's error names.

Every pair here was checked against SkyPilot's own loader (bench/skypilot_agreement.py).
The end of the file checks the whole labelled corpus in tests/spec/skypilot_corpus/.
"""

# One rule per row reads best on one line, however long its documents are.
# ruff: noqa: E501

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from skyloom.spec.loader import SpecError, load_task_file, parse_pipeline
from skyloom.spec.models import remote_mount_path

# (rule, accepted document, rejected document, field named by the error)
RULES = [
    ("yaml-duplicate-keys", "run: echo", "resources:\n  cpus: 2\n  cpus: 4", "resources.cpus"),
    ("file-not-empty", "run: echo", "# nothing", ""),
    ("doc-is-mapping", "run: echo", "- a\n- b", ""),
    ("unknown-field", "name: x", "nme: x", "nme"),
    ("name-pattern", "name: my.task_v2--x", "name: my task", "name"),
    ("name-no-triple-separator", "name: a--b", "name: a---b", "name"),
    ("name-is-string", "name: x", "name: 123", "name"),
    ("top-level-null-is-unset", "name:\nrun: echo", "nam:\nrun: echo", "nam"),
    (
        "header-name-only",
        "name: pipe\n---\nrun: echo",
        "name: pipe\nexecution: sometimes\n---\nrun: echo",
        "document 1: execution",
    ),
    (
        "header-execution-serial",
        "name: pipe\nexecution: serial\n---\nrun: echo",
        "name: pipe\nexecution: parallel",
        "document 1: execution",
    ),
    ("header-name-not-validated", "name: bad name\n---\nrun: echo", "name: bad name", "name"),
    (
        "pipeline-errors-located",
        "run: a\n---\nrun: b",
        "run: a\n---\nsetpu: b",
        "document 2: setpu",
    ),
    (
        "job-group-names",
        "name: g\nexecution: parallel\n---\nname: a\nrun: echo",
        "name: g\nexecution: parallel\n---\nrun: echo",
        "document 2: name",
    ),
    (
        "job-group-unique-names",
        "name: g\nexecution: parallel\n---\nname: a\n---\nname: b",
        "name: g\nexecution: parallel\n---\nname: a\n---\nname: a",
        "document 3: name",
    ),
    (
        "job-group-name-chars",
        "name: my-group\nexecution: parallel\n---\nname: a",
        "name: my group\nexecution: parallel\n---\nname: a",
        "document 1: name",
    ),
    (
        "job-group-primary-tasks",
        "name: g\nexecution: parallel\nprimary_tasks: [a]\n---\nname: a",
        "name: g\nexecution: parallel\nprimary_tasks: [b]\n---\nname: a",
        "document 1: primary_tasks",
    ),
    (
        "job-group-termination-delay",
        "name: g\nexecution: parallel\ntermination_delay: {default: 1m, a: 30}\n---\nname: a",
        "name: g\nexecution: parallel\ntermination_delay: soon\n---\nname: a",
        "document 1: termination_delay",
    ),
    (
        "job-group-inter-connection",
        "name: g\nexecution: parallel\ninter_connection: true\n---\nname: a",
        "name: g\nexecution: parallel\ninter_connection: 1\n---\nname: a",
        "document 1: inter_connection",
    ),
    ("num-nodes-positive", "num_nodes: 2", "num_nodes: 0", "num_nodes"),
    ("num-nodes-whole", "num_nodes: 2", "num_nodes: 2.0", "num_nodes"),
    ("run-is-string", "run: echo", "run: [a, b]", "run"),
    (
        "workdir-git",
        "workdir: {url: https://x/y.git, ref: main}",
        "workdir: {ref: main}",
        "workdir.url",
    ),
    ("envs-names", "envs: {A_1: x}", "envs: {1A: x}", "envs"),
    ("envs-values-become-strings", "envs: {A: [1, 2], B: true}", "envs: A=1", "envs"),
    ("envs-need-a-value", "envs: {HF_TOKEN: ''}", "envs: {HF_TOKEN: }", "envs.HF_TOKEN"),
    ("envs-null-mapping", "envs: {}", "envs:", "envs"),
    ("secrets-without-value-are-references", "secrets: {HF_TOKEN: }", "secrets: abc", "secrets"),
    (
        "secret-reference-takes-no-value",
        "secrets: {'secrets:HF_TOKEN': }",
        "secrets: {'secrets:HF_TOKEN': x}",
        "secrets",
    ),
    (
        "managed-secrets",
        "managed_secrets: [A, {B: {mount_path: /b}}]",
        "managed_secrets: [{A: {}, B: {}}]",
        "managed_secrets[0]",
    ),
    (
        "docker-login-all-three",
        "envs: {SKYPILOT_DOCKER_USERNAME: u, SKYPILOT_DOCKER_PASSWORD: p, SKYPILOT_DOCKER_SERVER: s}",
        "envs: {SKYPILOT_DOCKER_USERNAME: u}",
        "envs",
    ),
    (
        "docker-login-not-split",
        "secrets: {SKYPILOT_DOCKER_USERNAME: u, SKYPILOT_DOCKER_PASSWORD: p, SKYPILOT_DOCKER_SERVER: s}",
        "envs: {SKYPILOT_DOCKER_USERNAME: u, SKYPILOT_DOCKER_PASSWORD: p}\nsecrets: {SKYPILOT_DOCKER_SERVER: s}",
        "secrets",
    ),
    ("inputs-exactly-one", "inputs: {s3://a: 1}", "inputs: {}", "inputs"),
    ("inputs-not-null", "outputs: {s3://a: 1}", "outputs:", "outputs"),
    (
        "file-mount-relative-target",
        "file_mounts: {data: ./data}",
        "file_mounts: {data/: ./data}",
        "file_mounts.data/",
    ),
    (
        "file-mount-no-trailing-slash",
        "file_mounts: {/data: ./data}",
        "file_mounts: {/data: ./data/}",
        "file_mounts./data",
    ),
    (
        "file-mount-target-not-bucket",
        "file_mounts: {/data: s3://b}",
        "file_mounts: {s3://b: ./data}",
        "file_mounts.s3://b",
    ),
    (
        "file-mount-not-workdir",
        "file_mounts: {~/sky_workdir: ./d}",
        "workdir: .\nfile_mounts: {~/sky_workdir: ./d}",
        "file_mounts.~/sky_workdir",
    ),
    ("file-mount-source-kind", "file_mounts: {/d: ./d}", "file_mounts: {/d: 5}", "file_mounts./d"),
    (
        "file-mount-env-filled-in",
        "envs: {D: /d}\nfile_mounts: {$D: ./x}",
        "envs: {D: /d/}\nfile_mounts: {$D: ./x}",
        "file_mounts./d/",
    ),
    (
        "storage-fields",
        "file_mounts: {/d: {name: b, store: S3, mode: copy}}",
        "file_mounts: {/d: {name: b, mount_options: ro}}",
        "file_mounts./d.mount_options",
    ),
    (
        "storage-mode-choices",
        "file_mounts: {/d: {name: b, mode: MOUNT_CACHED}}",
        "file_mounts: {/d: {name: b, mode: sync}}",
        "file_mounts./d.mode",
    ),
    (
        "storage-type-needs-cached",
        "file_mounts: {/d: {name: b, mode: mount_cached, type: dataset_ro}}",
        "file_mounts: {/d: {name: b, type: dataset_ro}}",
        "file_mounts./d.type",
    ),
    (
        "storage-mount-config-needs-mount",
        "file_mounts: {/d: {source: s3://x, config: {mount: {read_only: true}}}}",
        "file_mounts: {/d: {source: s3://x, mode: copy, config: {mount: {read_only: true}}}}",
        "file_mounts./d.config.mount",
    ),
    (
        "storage-cached-settings",
        "file_mounts: {/d: {name: b, mode: mount_cached, config: {mount_cached: {buffer_size: 16M}}}}",
        "file_mounts: {/d: {name: b, mode: mount_cached, config: {mount_cached: {buffer_size: lots}}}}",
        "file_mounts./d.config.mount_cached.buffer_size",
    ),
    (
        "storage-source-list-not-empty",
        "file_mounts: {/d: {name: b, source: [./a]}}",
        "file_mounts: {/d: {name: b, source: []}}",
        "file_mounts./d.source",
    ),
    (
        "volume-store-needs-name",
        "file_mounts: {/v: {name: d, store: volume}}",
        "file_mounts: {/v: {store: volume}}",
        "file_mounts",
    ),
    ("resources-mapping", "resources: {cpus: 2}", "resources: [cpus: 2]", "resources"),
    ("cpus-positive", "resources: {cpus: 4+}", "resources: {cpus: 0}", "resources.cpus"),
    ("cpus-number", "resources: {cpus: 0.5}", "resources: {cpus: many}", "resources.cpus"),
    ("memory-size", "resources: {memory: 64GB+}", "resources: {memory: lots}", "resources.memory"),
    (
        "memory-positive-except-slurm",
        "resources: {infra: slurm, memory: 0}",
        "resources: {memory: 0}",
        "resources.memory",
    ),
    (
        "accelerators-forms",
        "resources: {accelerators: {A100: 8, H100: 8}}",
        "resources: {accelerators: 8}",
        "resources.accelerators",
    ),
    (
        "accelerator-count-positive",
        "resources: {accelerators: T4:0.5}",
        "resources: {accelerators: A100:0}",
        "resources.accelerators",
    ),
    (
        "accelerator-set-string",
        "resources: {accelerators: [A100, V100]}",
        "resources: {accelerators: '{A100:1, V100:1}'}",
        "resources.accelerators",
    ),
    (
        "accelerators-not-empty",
        "resources: {accelerators: A100}",
        "resources: {accelerators: []}",
        "resources.accelerators",
    ),
    (
        "gpus-alias",
        "resources: {gpus: L4}",
        "resources: {gpus: L4, accelerators: L4}",
        "resources.gpus",
    ),
    (
        "tpu-cloud",
        "resources: {infra: gcp, accelerators: tpu-v2-8}",
        "resources: {infra: aws, accelerators: tpu-v2-8}",
        "resources.accelerators",
    ),
    (
        "tpu-vm-instance-type",
        "resources: {accelerators: tpu-v2-8, instance_type: TPU-VM}",
        "resources: {accelerators: tpu-v2-8, instance_type: n1-highmem-8}",
        "resources.instance_type",
    ),
    (
        "accelerator-args",
        "resources: {accelerator_args: {tpu_vm: true}}",
        "resources: {accelerator_args: {foo: 1}}",
        "resources.accelerator_args.foo",
    ),
    (
        "infra-shape",
        "resources: {infra: aws/us-east-1/us-east-1a}",
        "resources: {infra: aws/a/b/c}",
        "resources.infra",
    ),
    (
        "infra-wildcards",
        "resources: {infra: '*/*/us-east-1a'}",
        "resources: {infra: dropbox}",
        "resources.infra",
    ),
    (
        "infra-k8s-context",
        "resources: {infra: k8s/arn:aws:eks:r:1:cluster/c}",
        "resources: {infra: k8s//ctx}",
        "resources.infra",
    ),
    (
        "infra-no-empty-part",
        "resources: {infra: aws/us-east-1}",
        "resources: {infra: aws//us-east-1}",
        "resources.infra",
    ),
    (
        "infra-or-cloud",
        "resources: {cloud: aws, region: us-east-1}",
        "resources: {infra: aws, region: us-east-1}",
        "resources.infra",
    ),
    ("cloud-names", "resources: {cloud: GCP}", "resources: {cloud: k8s}", "resources.cloud"),
    # SkyPilot has no `local` cloud; skyloom's embedded infra is only `infra: local`.
    ("cloud-not-local", "resources: {cloud: aws}", "resources: {cloud: local}", "resources.cloud"),
    (
        "any-of-cloud-not-local",
        "resources:\n  any_of: [{cloud: aws}, {cloud: gcp}]",
        "resources:\n  any_of: [{cloud: aws}, {cloud: Local}]",
        "resources.any_of[1].cloud",
    ),
    (
        "region-one-name",
        "resources: {region: us-east-1}",
        "resources: {zone: a/b/c}",
        "resources.zone",
    ),
    (
        "use-spot-bool",
        "resources: {use_spot: true}",
        "resources: {use_spot: 'yes'}",
        "resources.use_spot",
    ),
    (
        "job-recovery-strategy",
        "resources: {job_recovery: eager_next_region}",
        "resources: {job_recovery: sometimes}",
        "resources.job_recovery.strategy",
    ),
    (
        "job-recovery-none",
        "resources: {job_recovery: none}",
        "resources: {job_recovery: NONE}",
        "resources.job_recovery.strategy",
    ),
    (
        "job-recovery-exit-codes",
        "resources: {job_recovery: {recover_on_exit_codes: 7}}",
        "resources: {job_recovery: {recover_on_exit_codes: [3, 3]}}",
        "resources.job_recovery.recover_on_exit_codes",
    ),
    (
        "job-recovery-fields",
        "resources: {job_recovery: {max_restarts_on_errors: 3}}",
        "resources: {job_recovery: {backoff: 5}}",
        "resources.job_recovery.backoff",
    ),
    (
        "disk-size",
        "resources: {disk_size: 1TB}",
        "resources: {disk_size: 512MB}",
        "resources.disk_size",
    ),
    (
        "disk-size-positive",
        "resources: {disk_size: 100}",
        "resources: {disk_size: 0}",
        "resources.disk_size",
    ),
    (
        "disk-tier",
        "resources: {disk_tier: BEST}",
        "resources: {disk_tier: fastest}",
        "resources.disk_tier",
    ),
    (
        "network-tier",
        "resources: {network_tier: standard}",
        "resources: {network_tier: premium}",
        "resources.network_tier",
    ),
    (
        "local-disk",
        "resources: {local_disk: 'nvme:1000+'}",
        "resources: {local_disk: 'hdd:500'}",
        "resources.local_disk",
    ),
    (
        "max-hourly-cost",
        "resources: {max_hourly_cost: 2.5}",
        "resources: {max_hourly_cost: 0}",
        "resources.max_hourly_cost",
    ),
    (
        "ports",
        "resources: {ports: [8080, '10000-10010', '8000,9000']}",
        "resources: {ports: '9000-8000'}",
        "resources.ports",
    ),
    (
        "labels-strings",
        "resources: {labels: {team: ml}}",
        "resources: {labels: {n: 3}}",
        "resources.labels.n",
    ),
    (
        "image-id-docker-once",
        "resources: {image_id: {docker: img, us-east-1: ami-1}}",
        "resources: {image_id: {docker: img, us-east-1: 'docker:x'}}",
        "resources.image_id",
    ),
    (
        "autostop-forms",
        "resources: {autostop: 2h}",
        "resources: {autostop: 30s}",
        "resources.autostop",
    ),
    (
        "autostop-fields",
        "resources: {autostop: {idle_minutes: 5, down: true, wait_for: JOBS}}",
        "resources: {autostop: {wait_for: forever}}",
        "resources.autostop.wait_for",
    ),
    (
        "priority-range",
        "resources: {priority: -500}",
        "resources: {priority: 1001}",
        "resources.priority",
    ),
    (
        "volumes-path-and-name",
        "resources: {volumes: [{path: /x, storage_type: instance}]}",
        "resources: {volumes: [{path: /x}]}",
        "resources.volumes[0].name",
    ),
    (
        "resources-hooks-moved",
        "config: {hooks: [{run: echo}]}",
        "resources: {hooks: [{run: echo}]}",
        "resources.hooks",
    ),
    (
        "any-of-or-ordered",
        "resources: {any_of: [{infra: aws}]}",
        "resources: {any_of: [{infra: aws}], ordered: [{infra: gcp}]}",
        "resources.ordered",
    ),
    (
        "any-of-entry-nulls",
        "resources: {any_of: [{ports: null}]}",
        "resources: {any_of: [{cpus: null}]}",
        "resources.any_of[0].cpus",
    ),
    (
        "any-of-one-accelerator",
        "resources: {any_of: [{accelerators: {A100: 1}}]}",
        "resources: {any_of: [{accelerators: [A100]}]}",
        "resources.any_of[0].accelerators",
    ),
    (
        "accelerator-choices-vs-ordered",
        "resources: {accelerators: {A100: 1, H100: 1}, any_of: [{infra: aws}]}",
        "resources: {accelerators: {A100: 1, H100: 1}, ordered: [{infra: aws}]}",
        "resources.accelerators",
    ),
    (
        "accelerator-list-vs-any-of",
        "resources: {accelerators: [A100], any_of: [{infra: aws}]}",
        "resources: {accelerators: [A100, H100], any_of: [{infra: aws}]}",
        "resources.accelerators",
    ),
    (
        "candidate-merged-infra-and-cloud",
        "resources: {cloud: aws, any_of: [{region: us-east-1}]}",
        "resources: {cloud: aws, any_of: [{infra: gcp}]}",
        "resources.any_of[0].infra",
    ),
    (
        "service-readiness-path",
        "service: {readiness_probe: /health}",
        "service: {readiness_probe: health}",
        "service.readiness_probe.path",
    ),
    (
        "service-readiness-mapping-needs-path",
        "service: {readiness_probe: {path: /, timeout_seconds: 5}}",
        "service: {readiness_probe: {timeout_seconds: 5}}",
        "service.readiness_probe.path",
    ),
    (
        "service-post-data-json",
        "service: {readiness_probe: {path: /, post_data: '{\"a\": 1}'}}",
        "service: {readiness_probe: {path: /, post_data: '{no'}}",
        "service.readiness_probe.post_data",
    ),
    (
        "service-replicas-or-policy",
        "service: {replicas: 2}",
        "service: {replicas: 2, replica_policy: {min_replicas: 1}}",
        "service.replica_policy",
    ),
    (
        "service-policy-min-required",
        "service: {replica_policy: {min_replicas: 1}}",
        "service: {replica_policy: {max_replicas: 3}}",
        "service.replica_policy.min_replicas",
    ),
    (
        "service-max-ge-min",
        "service: {replica_policy: {min_replicas: 1, max_replicas: 3, target_qps_per_replica: 1}}",
        "service: {replica_policy: {min_replicas: 3, max_replicas: 1, target_qps_per_replica: 1}}",
        "service.replica_policy.max_replicas",
    ),
    (
        "service-qps-needs-max",
        "service: {replica_policy: {min_replicas: 1, max_replicas: 2, target_qps_per_replica: 5}}",
        "service: {replica_policy: {min_replicas: 1, target_qps_per_replica: 5}}",
        "service.replica_policy.max_replicas",
    ),
    (
        "service-autoscale-needs-qps",
        "service: {replica_policy: {min_replicas: 2, max_replicas: 2}}",
        "service: {replica_policy: {min_replicas: 1, max_replicas: 3}}",
        "service.replica_policy.max_replicas",
    ),
    (
        "service-qps-per-accelerator",
        "service: {load_balancing_policy: instance_aware_least_load, replica_policy: {min_replicas: 1, max_replicas: 2, target_qps_per_replica: {A100: 5}}}",
        "service: {replica_policy: {min_replicas: 1, max_replicas: 2, target_qps_per_replica: {A100: 5}}}",
        "service.load_balancing_policy",
    ),
    (
        "service-instance-aware-needs-map",
        "service: {load_balancing_policy: instance_aware_least_load, replica_policy: {min_replicas: 1, max_replicas: 2, target_qps_per_replica: {A100: 5}}}",
        "service: {load_balancing_policy: instance_aware_least_load, replica_policy: {min_replicas: 1, max_replicas: 2, target_qps_per_replica: 5}}",
        "service.replica_policy.target_qps_per_replica",
    ),
    (
        "service-qps-keys",
        "service: {load_balancing_policy: instance_aware_least_load, replica_policy: {min_replicas: 1, max_replicas: 2, target_qps_per_replica: {'H100:1': 5}}}",
        "service: {load_balancing_policy: instance_aware_least_load, replica_policy: {min_replicas: 1, max_replicas: 2, target_qps_per_replica: {a100: 5}}}",
        "service.replica_policy.target_qps_per_replica",
    ),
    (
        "service-lb-policy",
        "service: {load_balancing_policy: least_load}",
        "service: {load_balancing_policy: LEAST_LOAD}",
        "service.load_balancing_policy",
    ),
    (
        "service-spot-placer",
        "service: {replica_policy: {min_replicas: 1, spot_placer: DYNAMIC_FALLBACK}}",
        "service: {replica_policy: {min_replicas: 1, spot_placer: cheapest}}",
        "service.replica_policy.spot_placer",
    ),
    ("service-ports", "service: {ports: 8080}", "service: {ports: 70000}", "service.ports"),
    (
        "service-replicas-non-negative",
        "service: {replicas: 0}",
        "service: {replicas: -1}",
        "service.replicas",
    ),
    (
        "service-tls",
        "service: {tls: {keyfile: k, certfile: c}}",
        "service: {tls: {keyfile: k}}",
        "service.tls.certfile",
    ),
    (
        "service-replicas-or-workers",
        "service: {workers: 2}",
        "service: {replicas: 2, workers: 2}",
        "service.workers",
    ),
    (
        "service-readiness-not-null",
        "service: {replicas: 1}",
        "service: {readiness_probe: }",
        "service.readiness_probe",
    ),
    ("pool-needs-workers", "pool: {workers: 2}", "pool: {}", "pool"),
    (
        "pool-min-needs-max",
        "pool: {min_workers: 1, max_workers: 3}",
        "pool: {min_workers: 1}",
        "pool.min_workers",
    ),
    (
        "pool-min-le-max",
        "pool: {min_workers: 1, max_workers: 3}",
        "pool: {min_workers: 5, max_workers: 2}",
        "pool.min_workers",
    ),
    (
        "pool-queue-threshold-needs-max",
        "pool: {max_workers: 3, min_workers: 1, queue_length_threshold: 2}",
        "pool: {workers: 2, queue_length_threshold: 2}",
        "pool.queue_length_threshold",
    ),
    (
        "pool-delays-need-max",
        "pool: {min_workers: 1, max_workers: 3, upscale_delay_seconds: 5}",
        "pool: {workers: 2, upscale_delay_seconds: 5}",
        "pool.upscale_delay_seconds",
    ),
    ("pool-or-service", "pool: {workers: 1}", "pool: {workers: 1}\nservice: {replicas: 1}", "pool"),
    (
        "service-pool-no-ports",
        "service: {pool: {workers: 2}}",
        "service: {pool: {workers: 2}, ports: 8080}",
        "service.ports",
    ),
    (
        "service-pool-no-replicas",
        "service: {pool: {workers: 2}}",
        "service: {pool: {workers: 2}, replicas: 2}",
        "service.replicas",
    ),
    (
        "config-sections",
        "config: {kubernetes: {provision_timeout: 600}}",
        "config: {foo: 1}",
        "config.foo",
    ),
    (
        "config-section-not-null",
        "config: {gcp: {vpc_name: }}",
        "config: {kubernetes: }",
        "config.kubernetes",
    ),
    (
        "config-custom-metadata",
        "config: {kubernetes: {custom_metadata: {labels: {a: b}}}}",
        "config: {kubernetes: {custom_metadata: {name: x}}}",
        "config.kubernetes.custom_metadata",
    ),
    (
        "config-gcp-vpc",
        "config: {gcp: {vpc_name: proj/my-vpc}}",
        "config: {gcp: {vpc_name: My_VPC}}",
        "config.gcp.vpc_name",
    ),
    (
        "config-hooks",
        "config: {hooks: [{run: x, events: [stop, down], timeout: 60}]}",
        "config: {hooks: [{run: x, events: [stop, stop]}]}",
        "config.hooks[0].events",
    ),
    (
        "config-hooks-run",
        "config: {hooks: [{run: x}]}",
        "config: {hooks: [{run: ''}]}",
        "config.hooks[0].run",
    ),
    (
        "api-server-access",
        "api_server_access: false",
        "api_server_access: 'no'",
        "api_server_access",
    ),
    ("metadata-alias", "_metadata: {a: 1}", "metadata: {a: 1}", "metadata"),
]


def parse(text: str, envs: dict[str, str] | None = None, secrets: dict[str, str] | None = None):
    return parse_pipeline(text + "\n", "task.yaml", env_overrides=envs, secret_overrides=secrets)


@pytest.mark.parametrize("rule, ok, bad, field", RULES, ids=[r[0] for r in RULES])
def test_rule(rule: str, ok: str, bad: str, field: str) -> None:
    parse(ok)
    with pytest.raises(SpecError) as e:
        parse(bad)
    assert e.value.source == "task.yaml"
    assert e.value.field == field, f"{rule}: {e.value}"
    assert e.value.message


def test_rules_are_named_once() -> None:
    names = [r[0] for r in RULES]
    assert len(names) == len(set(names))


# ---- --env / --secret overrides ---------------------------------------------------------------


def test_an_env_without_value_needs_an_override_and_says_how(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text("envs:\n  HF_TOKEN:\nrun: echo $HF_TOKEN\n")
    with pytest.raises(SpecError) as e:
        load_task_file(path)
    assert e.value.field == "envs.HF_TOKEN"
    assert "--env HF_TOKEN=" in e.value.message
    task = load_task_file(path, env_overrides={"HF_TOKEN": "abc"}).tasks[0]
    assert task.envs == {"HF_TOKEN": "abc"}


def test_an_empty_override_is_a_value() -> None:
    assert parse("envs: {A: }", envs={"A": ""}).tasks[0].envs == {"A": ""}


def test_overrides_apply_to_every_task_of_a_pipeline() -> None:
    p = parse("envs: {A: }\nrun: a\n---\nenvs: {A: }\nrun: b", envs={"A": "1"})
    assert [t.envs for t in p.tasks] == [{"A": "1"}, {"A": "1"}]


def test_overrides_are_filled_into_file_mounts() -> None:
    text = "envs: {SIZE: 7}\nfile_mounts: {'/m-${SIZE}b': s3://w/$SIZE}"
    task = parse(text, envs={"SIZE": "13"})
    assert task.tasks[0].file_mounts == {"/m-13b": "s3://w/13"}


def test_overrides_complete_docker_login() -> None:
    text = "envs: {SKYPILOT_DOCKER_USERNAME: u}"
    with pytest.raises(SpecError):
        parse(text)
    parse(text, envs={"SKYPILOT_DOCKER_PASSWORD": "p", "SKYPILOT_DOCKER_SERVER": "s"})


def test_secrets_without_value_are_references_resolved_at_launch() -> None:
    task = parse("secrets: {HF_TOKEN: , KEY: v}").tasks[0]
    assert task.secret_refs() == ["HF_TOKEN"] and task.secret_values() == {"KEY": "v"}
    task = parse("secrets: {HF_TOKEN: }", secrets={"HF_TOKEN": "x"}).tasks[0]
    assert task.secret_values() == {"HF_TOKEN": "x"} and task.secret_refs() == []
    # A list names references only; bare names are taken as references too.
    task = parse("secrets: ['secrets:A', B]").tasks[0]
    assert task.secret_refs() == ["A", "B"]


# ---- what a relative file-mount target means --------------------------------------------------


def test_a_relative_mount_target_lands_under_the_workdir() -> None:
    assert remote_mount_path("data") == "~/sky_workdir/data"
    assert remote_mount_path("~/data") == "~/sky_workdir/data".replace("sky_workdir/", "")
    assert remote_mount_path("/data") == "/data"


# ---- skyloom's own infras ---------------------------------------------------------------------


@pytest.mark.parametrize("infra", ["local", "LOCAL", "ssh", "ssh/pool-1", "k8s/ctx"])
def test_skyloom_infras_are_accepted(infra: str) -> None:
    parse(f"resources: {{infra: {infra}}}")


def test_the_local_infra_is_not_a_cloud_name() -> None:
    # `infra: local` is skyloom's; `cloud: local` is refused as SkyPilot refuses it, with a
    # pointer to the spelling skyloom takes.
    assert parse("resources: {infra: local}").tasks[0].resources.placement()[0] == "local"
    with pytest.raises(SpecError) as e:
        parse("resources: {cloud: LOCAL}")
    assert e.value.field == "resources.cloud"
    assert "infra: local" in e.value.message


@pytest.mark.parametrize("infra", ["local/zone", "local/x/y", "ssh/a/b"])
def test_skyloom_infras_take_no_extra_parts(infra: str) -> None:
    with pytest.raises(SpecError) as e:
        parse(f"resources: {{infra: {infra}}}")
    assert e.value.field == "resources.infra"


def test_placement_of_each_infra() -> None:
    cands = {
        infra: parse(f"resources: {{infra: '{infra}'}}").tasks[0].resources.placement()
        for infra in ("local", "ssh/p", "k8s/a/b", "aws/*/z", "*")
    }
    assert cands == {
        "local": ("local", None, None),
        "ssh/p": ("ssh", "p", None),
        "k8s/a/b": ("kubernetes", "a/b", None),
        "aws/*/z": ("aws", None, "z"),
        "*": (None, None, None),
    }


# ---- the labelled corpus ----------------------------------------------------------------------

CORPUS = Path(__file__).parent / "skypilot_corpus"


def _overrides(text: str) -> tuple[dict[str, str], dict[str, str]]:
    first = text.split("\n", 1)[0]
    envs: dict[str, str] = {}
    secrets: dict[str, str] = {}
    if first.startswith("# overrides:"):
        words = shlex.split(first[len("# overrides:") :])
        for flag, value in zip(words[::2], words[1::2], strict=True):
            key, _, val = value.partition("=")
            (envs if flag == "--env" else secrets)[key] = val
    return envs, secrets


def _disagreements(cases: list[tuple[str, str, bool]]) -> list[str]:
    out = []
    for name, text, accepted in cases:
        envs, secrets = _overrides(text)
        try:
            parse_pipeline(text, name, env_overrides=envs, secret_overrides=secrets)
            got: str | None = None
        except SpecError as e:
            got = str(e)
        if (got is None) != accepted:
            out.append(f"{name}: SkyPilot {'accepts' if accepted else 'rejects'}; skyloom {got}")
    return out


def test_written_corpus_agrees_with_skypilot() -> None:
    verdicts = json.loads((CORPUS / "verdicts.json").read_text())
    assert sorted(verdicts) == sorted(p.name for p in (CORPUS / "written").glob("*.yaml"))
    # A verdict of null needs SkyPilot's cloud catalog, which the recording run could not reach.
    cases = [
        (name, (CORPUS / "written" / name).read_text(), v["accepted"])
        for name, v in verdicts.items()
        if v["accepted"] is not None
    ]
    assert len(cases) > 300
    assert _disagreements(cases) == []


def test_mutated_corpus_agrees_with_skypilot() -> None:
    rows = [json.loads(line) for line in (CORPUS / "mutations.jsonl").read_text().splitlines()]
    assert len(rows) > 1000 and any(r["accepted"] for r in rows)
    assert _disagreements([(r["id"], r["text"], r["accepted"]) for r in rows]) == []
