# Docker deployment: 1 server + 8 workers, one container (and one GPU) each. Guide: docker/README.md.
# Included by the top-level Makefile; run from the repository root.
#   make docker-build [BASE_IMAGE=pytorch/pytorch:...] [BYZ_UID=$(id -u) BYZ_GID=$(id -g)]
#   make docker-up ARGS="dataset=cifar10 model=resnet20" [RUN_NAME=...] [CPU=1] [BYZ_DATA=/abs/dir]
#   make docker-down | make docker-config
DOCKER       ?= docker
COMPOSE      ?= $(DOCKER) compose
BYZ_PROJECT  ?= byzdist
BYZ_IMAGE    ?= byzdist:latest
BASE_IMAGE   ?=
BYZ_UID      ?=
BYZ_GID      ?=
CPU          ?=
# One name for the whole run (rendezvous id and run directory), fixed once per make invocation.
ifeq ($(strip $(RUN_NAME)),)
RUN_NAME := $(shell date +%Y%m%d-%H%M%S)
endif
COMPOSE_RUN := $(COMPOSE) -p $(BYZ_PROJECT) -f docker/compose.yaml $(if $(CPU),-f docker/compose.cpu.yaml)

.PHONY: docker-build docker-up docker-down docker-config

## build the image (CUDA PyTorch base, the project installed, non-root user)
docker-build:
	$(DOCKER) build -f docker/Dockerfile -t $(BYZ_IMAGE) \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  $(if $(BYZ_UID),--build-arg BYZ_UID=$(BYZ_UID)) $(if $(BYZ_GID),--build-arg BYZ_GID=$(BYZ_GID)) .

## start the 9 containers in the foreground; ARGS are hydra overrides for every rank
docker-up: export BYZ_ARGS = $(ARGS)
docker-up: export BYZ_IMAGE := $(BYZ_IMAGE)
docker-up: export RUN_NAME := $(RUN_NAME)
docker-up:
	@echo "run $(RUN_NAME): outputs in /runs/$(RUN_NAME) (volume $(BYZ_PROJECT)_runs unless BYZ_RUNS is set)"
	$(COMPOSE_RUN) up

## stop and remove the containers (the runs volume stays)
docker-down:
	$(COMPOSE_RUN) down --remove-orphans

## print the resolved compose model
docker-config: export BYZ_ARGS = $(ARGS)
docker-config: export BYZ_IMAGE := $(BYZ_IMAGE)
docker-config: export RUN_NAME := $(RUN_NAME)
docker-config:
	$(COMPOSE_RUN) config
