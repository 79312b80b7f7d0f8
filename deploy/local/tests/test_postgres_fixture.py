"""The postgres fixtures give working, isolated databases; database_url covers both engines."""

import sqlite3

import psycopg


def test_postgres_url_is_a_fresh_database(postgres_url):
    assert postgres_url.startswith("postgresql+psycopg://")
    with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
        tables = conn.execute("select count(*) from information_schema.tables where table_schema='public'").fetchone()
        assert tables == (0,)
        conn.execute("create table frames (id text primary key)")
        conn.execute("insert into frames values ('a')")
        assert conn.execute("select id from frames").fetchall() == [("a",)]


def test_database_url_param_names_its_engine(database_url, request):
    engine = request.node.callspec.params["database_url"]
    expected = {"sqlite": "sqlite:///", "postgres": "postgresql+psycopg://"}[engine]
    assert database_url.startswith(expected)
    if engine == "postgres":
        assert request.node.get_closest_marker("postgres") is not None
        connection = psycopg.connect(database_url.replace("+psycopg", ""))
    else:
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    with connection:
        connection.execute("create table labels (frame text, label text)")
        connection.execute("insert into labels values ('f1', 'rot')")
        assert connection.execute("select label from labels").fetchall() == [("rot",)]
