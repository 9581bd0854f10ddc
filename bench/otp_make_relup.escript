#!/usr/bin/env escript
%% -*- erlang -*-
%%! -noshell
%% Times systools:make_relup on the benchmark's OTP files: RUNS runs in
%% one VM, printing each run's milliseconds (VM start not included).
%% Usage: otp_make_relup.escript OTP_DIR RUNS
-mode(compile).

main([Dir, Runs]) ->
    Path = systools_lib:get_path([filename:join([Dir, "lib", "*", "ebin"])]) ++ code:get_path(),
    Top = filename:join(Dir, "rel2"), Base = filename:join(Dir, "rel1"),
    lists:foreach(
      fun(_) ->
              {T, R} = timer:tc(fun() ->
                                        systools:make_relup(Top, [Base], [Base],
                                                            [{path, Path}, silent, noexec])
                                end),
              {ok, {_, [{_, _, Up}], [{_, _, Dn}]}, _, _} = R,
              io:format("~.1f ~b ~b~n", [T / 1000, length(Up), length(Dn)])
      end, lists:seq(1, list_to_integer(Runs))).
