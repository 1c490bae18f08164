"""The pure limits bookkeeping, with a hand-stepped clock."""

from __future__ import annotations

from imapproxy.server.limits import BASE_DELAY, Limiter, LimitValues


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_per_ip_refuses_the_next_one_only_for_that_address() -> None:
    lim = Limiter(LimitValues(max_sessions_per_ip=2))
    assert lim.open_session("10.0.0.1") is None
    assert lim.open_session("10.0.0.1") is None
    assert lim.open_session("10.0.0.1") == "sessions_per_ip"
    assert lim.open_session("10.0.0.2") is None
    lim.close_session("10.0.0.1", None)
    assert lim.open_session("10.0.0.1") is None
    assert lim.sessions_of("10.0.0.1") == 2


def test_zero_switches_a_limit_off() -> None:
    lim = Limiter(LimitValues(max_sessions_per_ip=0, failures_per_ip=0, failures_per_user=0))
    for _ in range(100):
        assert lim.open_session("10.0.0.1") is None
        assert lim.check_login("10.0.0.1", "bob").refused is None
        lim.login_finished("10.0.0.1", "bob", "failed")


def test_sessions_per_user_counts_successful_logins_case_folded() -> None:
    lim = Limiter(LimitValues(max_sessions_per_user=1))
    assert lim.check_login("10.0.0.1", "Alice").refused is None
    lim.login_finished("10.0.0.1", "Alice", "ok")
    assert lim.check_login("10.0.0.2", "alice").refused == "sessions_per_user"
    assert lim.check_login("10.0.0.2", "bob").refused is None
    lim.close_session("10.0.0.1", "ALICE")
    assert lim.check_login("10.0.0.2", "alice").refused is None


def test_failures_grow_the_delay_then_refuse_until_the_window_passes() -> None:
    clock = Clock()
    lim = Limiter(LimitValues(failures_per_ip=3, failures_per_user=100, window=60), clock)
    delays = []
    for _ in range(3):
        verdict = lim.check_login("10.0.0.9", "bob")
        assert verdict.refused is None
        delays.append(verdict.delay)
        lim.login_finished("10.0.0.9", "bob", "failed")
        clock.now += 1
    assert delays == [0.0, BASE_DELAY, 2 * BASE_DELAY]
    refused = [lim.check_login("10.0.0.9", "bob") for _ in range(3)]
    assert {v.refused for v in refused} == {"login_failures_ip"}
    assert refused[0].delay < refused[1].delay <= refused[2].delay <= 6.0
    # Another address with the same user is not affected by the address limit.
    assert lim.check_login("10.0.0.10", "bob").refused is None
    lim.login_finished("10.0.0.10", "bob", "ok")
    # The window slides: two seconds after the first failure left it, one more try.
    clock.now += 58
    assert lim.check_login("10.0.0.9", "bob").refused is None


def test_concurrent_logins_from_one_address_are_not_failures() -> None:
    lim = Limiter(LimitValues(failures_per_ip=3))
    verdicts = [lim.check_login("10.0.0.9", f"user{i}") for i in range(20)]  # a busy NAT
    assert {v.refused for v in verdicts} == {None}
    for i in range(20):
        lim.login_finished("10.0.0.9", f"user{i}", "ok")


def test_per_user_failures_hold_across_addresses() -> None:
    lim = Limiter(LimitValues(failures_per_ip=100, failures_per_user=2))
    for i in range(2):
        assert lim.check_login(f"10.0.1.{i}", "carol").refused is None
        lim.login_finished(f"10.0.1.{i}", "carol", "failed")
    assert lim.check_login("10.0.1.50", "CAROL").refused == "login_failures_user"
    assert lim.check_login("10.0.1.50", "dave").refused is None


def test_a_literal_login_failure_still_counts_for_the_user() -> None:
    from imapproxy.server.guard import SessionGuard
    from imapproxy.session.output import LoginDone
    from imapproxy.telemetry.recorder import Telemetry

    lim = Limiter(LimitValues(failures_per_ip=100, failures_per_user=1))
    guard = SessionGuard(lim, "10.0.0.1", "10.0.0.1:1000", Telemetry(None))
    assert guard.gate(None) is None  # the name was a literal: not known at the gate
    guard.login_done(LoginDone("LOGIN", "failed", "erin"))
    assert lim.check_login("10.0.0.2", "erin").refused == "login_failures_user"
    guard.close()
    assert lim.sessions_of("10.0.0.1") == 0


def test_a_settled_login_leaves_no_failure_entry_behind() -> None:
    # Memory per logged-in user: an address or user with no failure in the window and no
    # login in flight is forgotten at once, whether the login succeeded or was abandoned;
    # a failure is kept (it counts), and the failing user is still delayed next time.
    lim = Limiter(LimitValues())
    for i in range(50):
        assert lim.check_login(f"10.0.1.{i}", f"user{i}").refused is None
        lim.login_finished(f"10.0.1.{i}", f"user{i}", "ok" if i % 2 else "abandoned")
    assert lim.failure_keys() == 0
    lim.check_login("10.0.2.1", "mallory")
    lim.login_finished("10.0.2.1", "mallory", "failed")
    assert lim.failure_keys() == 2
    assert lim.check_login("10.0.2.2", "mallory").delay == BASE_DELAY
