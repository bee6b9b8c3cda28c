#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) answer, starting local
# ones if they are installed but stopped. Sourced by demo.sh and test.sh.

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  local deadline=$((SECONDS + $2))
  until port_open "$1"; do
    if ((SECONDS >= deadline)); then
      echo "error: $3 did not start listening on 127.0.0.1:$1 within $2 s" >&2
      return 1
    fi
    sleep 0.5
  done
}

ensure_redis() {
  port_open 6379 && return 0
  if command -v redis-server >/dev/null; then
    echo "Redis is not running; starting a local one (no persistence) on 127.0.0.1:6379" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_port 6379 30 Redis
  else
    echo "error: Redis is not reachable on 127.0.0.1:6379 and redis-server is not installed." >&2
    echo "       Install it (Debian: apt-get install redis-server) or point REDIS_URL at one." >&2
    return 1
  fi
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  if command -v rabbitmq-server >/dev/null; then
    echo "RabbitMQ is not running; starting a local one on 127.0.0.1:5672" >&2
    rabbitmq-server -detached >/dev/null 2>&1
    wait_port 5672 120 RabbitMQ
    command -v rabbitmqctl >/dev/null && rabbitmqctl await_startup >/dev/null 2>&1 || true
  else
    echo "error: RabbitMQ is not reachable on 127.0.0.1:5672 and rabbitmq-server is not installed." >&2
    echo "       Install it (Debian: apt-get install rabbitmq-server) or point AMQP_URL at one." >&2
    return 1
  fi
}

ensure_services() { ensure_redis && ensure_rabbitmq; }

# The dashboard test drives a real headless browser: install Debian's chromium when it is
# missing and we can (root with apt-get); otherwise that one test skips, saying why.
ensure_chromium() {
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium (for the dashboard browser test)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; then
      echo "warning: could not install chromium; the dashboard browser test will skip" >&2
    fi
  else
    echo "warning: chromium is not installed (apt-get install chromium); the dashboard browser test will skip" >&2
  fi
  return 0
}
