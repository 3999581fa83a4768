-- POST /api/v1/tools/spell_check/execute with the token from the TOKEN environment variable.
wrk.method = "POST"
wrk.path = "/api/v1/tools/spell_check/execute"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.body = '{"input":{"text":"Превет, как дела? Сегодня хорошая погода."}}'
